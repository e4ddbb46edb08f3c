"use strict";
// The explain page: draws explain.json's record (inlined above) with the PNGs beside the page.
(function () {
  const record = JSON.parse(document.getElementById("fmonnx-explain").textContent);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  function number(value) {
    if (value === null || value === undefined) return "n/a";
    return Math.abs(value) >= 1e4 || (value !== 0 && Math.abs(value) < 1e-3) ? value.toExponential(2) : value.toPrecision(3);
  }

  function describe(target) {
    const name = target.label !== undefined && target.label !== null ? target.label
      : target.class !== undefined && target.class !== null ? `class ${target.class}` : target.kind || "target";
    const score = target.score === undefined ? "" : ` · score ${number(target.score)}`;
    return `${target.kind ? target.kind + ": " : ""}${name}${score}`;
  }

  // why a layer's map is zero, or "" when it is not
  function zeroNote(layer) {
    if (!layer.depends) return "The score does not depend on this layer: its gradient, and so its map, is zero.";
    if (layer.raw_max === null || layer.raw_max <= 0) return "This layer's map is all zero: no positive evidence for the target here.";
    return "";
  }

  function meta() {
    document.getElementById("model").textContent = String(record.model || "the model").split(/[\\/]/).pop();
    const list = document.getElementById("meta");
    for (const key of ["model", "method", "provider", "source", "fmonnx_version"]) {
      if (record[key] === undefined || record[key] === null) continue;
      const value = record[key];
      // the source is a mapping (framework, producer, ...): its framework and producer read best
      const shown = typeof value === "object"
        ? [value.framework, value.producer].filter((part, i, all) => part && all.indexOf(part) === i).join(", ")
        : String(value);
      list.append(el("div", {}, el("dt", { text: key }), el("dd", { text: shown })));
    }
  }

  function imageSection(image, number_) {
    const section = el("section", { class: "image", "data-index": String(number_) });
    section.append(el("h2", { text: String(image.image).split(/[\\/]/).pop() }));
    if (image.problems && image.problems.length) {
      section.append(el("div", { class: "problems" }, ...image.problems.map((p) => el("p", { text: p }))));
    }
    const choices = image.choices && image.choices.length ? image.choices
      : [{ target: image.target, overlay: (image.layers.find((l) => l.name === image.chosen) || image.layers[image.layers.length - 1] || {}).overlay }];
    const main = el("img", { class: "main-overlay", alt: "heat of the explained target on the input", src: choices[0].overlay });
    const caption = el("figcaption", { class: "main-caption", text: `${describe(choices[0].target)} · layer ${image.chosen || ""}` });
    const top = el("div", { class: "top" },
      el("figure", {}, el("img", { class: "photo", alt: "input", src: image.photo }), el("figcaption", { text: `input ${JSON.stringify(image.input_shape)}` })),
      el("figure", {}, main, caption));
    if (image.boxes_picture) {
      top.append(el("figure", {}, el("img", { class: "boxes", alt: "detections", src: image.boxes_picture }), el("figcaption", { text: image.boxes_drawn && image.boxes_drawn < image.boxes.length ? `the best ${image.boxes_drawn} of ${image.boxes.length} detections` : `${image.boxes.length} detections` })));
    }
    const picker = el("div", { class: "picker", role: "group", "aria-label": "Target" }, el("strong", { text: "Target" }));
    choices.forEach((choice, index) => {
      const button = el("button", { type: "button", "data-choice": String(index), "aria-pressed": String(index === 0), text: describe(choice.target) });
      button.addEventListener("click", () => {
        main.src = choice.overlay;
        caption.textContent = `${describe(choice.target)} · layer ${image.chosen || ""}`;
        for (const other of picker.querySelectorAll("button")) other.setAttribute("aria-pressed", String(other === button));
      });
      picker.append(button);
    });
    top.append(picker);
    section.append(top);

    section.append(el("h3", { text: "The target's map through the depth of the network" }));
    const strip = el("div", { class: "strip", role: "group", "aria-label": "Layers" });
    const ranked = el("div", { class: "ranked" });
    const select = (index) => {
      const layer = image.layers[index];
      for (const item of strip.children) item.setAttribute("aria-pressed", String(item.dataset.index === String(index)));
      ranked.replaceChildren();
      ranked.dataset.layer = layer.name;
      ranked.append(el("h3", { text: `${layer.name} · ${layer.method} · ${JSON.stringify(layer.shape)}` }));
      const note = zeroNote(layer);
      if (note) ranked.append(el("p", { class: "note", text: note }));
      const channels = el("div", { class: "channels" },
        el("figure", { class: "layer-overlay" }, el("img", { src: layer.overlay, alt: `${layer.name} map` }), el("figcaption", { text: `map, max ${number(layer.raw_max)}` })));
      for (const entry of layer.top_channels) {
        channels.append(el("figure", { class: "channel", "data-channel": String(entry.channel) },
          el("img", { src: entry.picture, alt: `channel ${entry.channel}` }),
          el("figcaption", { text: `channel ${entry.channel} · weight ${number(entry.weight)}` })));
      }
      ranked.append(el("p", { class: "muted", text: "Channels ranked by their weight in the map: their feature maps." }), channels);
    };
    image.layers.forEach((layer, index) => {
      const zero = zeroNote(layer);
      const item = el("button", { type: "button", class: zero ? "strip-item zero" : "strip-item", "data-index": String(index), "data-layer": layer.name, title: zero || layer.name },
        el("img", { src: layer.overlay, alt: layer.name }), el("span", { text: layer.name }));
      item.addEventListener("click", () => select(index));
      strip.append(item);
    });
    section.append(strip, ranked);
    if (image.layers.length) {
      const chosen = image.layers.findIndex((layer) => layer.name === image.chosen);
      select(chosen >= 0 ? chosen : image.layers.length - 1);
    }
    return section;
  }

  meta();
  const main = document.getElementById("images");
  record.images.forEach((image, index) => main.append(imageSection(image, index)));
})();
