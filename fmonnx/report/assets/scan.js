"use strict";
// The scan page: per layer its channels, each with its top-k crops (cells of the layer's inlined
// crops picture: channel c on row c, rank r in column r) and its statistics. Nothing is fetched.
(function () {
  const data = JSON.parse(document.getElementById("fmonnx-scan").textContent);
  const record = data.record;
  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs, ...children) => {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value; else node.setAttribute(key, value);
    }
    for (const child of children) node.append(child);
    return node;
  };
  const num = (value) => (value === null ? "-" : value === 0 ? "0" : Math.abs(value) < 1e-3 || Math.abs(value) >= 1e4 ? value.toExponential(2) : value.toPrecision(4));
  const baseName = (path) => path.split(/[\\/#]/).filter(Boolean).pop();
  const quote = (text) => (/^[\w.\/:-]+$/.test(text) ? text : "'" + text.replace(/'/g, "'\\''") + "'");
  const stem = (text) => baseName(text).replace(/\.[^.]*$/, "").replace(/[^\w.-]+/g, "_");

  $("model").textContent = baseName(record.model);
  const meta = [
    ["model", record.model],
    ["images", `${record.images} scanned` + (record.skipped.length ? `, ${record.skipped.length} skipped` : "")],
    ["input", `${record.input.size.join(" x ")} (${record.input.preprocess})`],
    ["top", `${record.top} per channel`],
    ["engine", `${record.engine} (${record.provider})`],
    ["fmonnx", record.fmonnx_version],
  ];
  for (const [key, value] of meta) $("meta").append(el("div", {}, el("dt", {}, key), el("dd", {}, value)));
  for (const skipped of record.skipped) $("problems").append(el("p", {}, `skipped ${skipped.image}: ${skipped.reason}`));
  for (const problem of record.problems) $("problems").append(el("p", {}, problem));

  let current = 0;
  const buttons = record.layers.map((layer, index) => {
    const button = el("button", { type: "button", "data-layer": layer.name },
      layer.name, " ", el("span", { class: "dims" }, `${layer.shape.join("x")}, ${layer.dead_channels} dead`));
    button.addEventListener("click", () => show(index));
    $("layers").append(button);
    return button;
  });
  const orders = {
    channel: () => 0,
    max: (a, b) => (b.max ?? -Infinity) - (a.max ?? -Infinity),
    mean: (a, b) => (b.mean ?? -Infinity) - (a.mean ?? -Infinity),
    fire: (a, b) => (b.fire_fraction ?? 0) - (a.fire_fraction ?? 0),
    std: (a, b) => (b.std ?? 0) - (a.std ?? 0),
  };

  function channelRow(layer, channel) {
    const crops = el("div", { class: "crops" });
    const grid = layer.crops_grid;
    const cell = grid.cell;
    const left = grid.padding + Math.floor(channel.channel / grid.rows) * grid.group_step;
    const top = grid.padding + (channel.channel % grid.rows) * grid.step;
    channel.top.forEach((entry, rank) => {
      const box = entry.box ? ` box [${entry.box.join(", ")}]` : "";
      crops.append(el("span", {
        class: "crop",
        title: `#${rank + 1} ${entry.image}: ${num(entry.value)} at y ${entry.y}, x ${entry.x}${box}`,
        style: `width:${cell}px;height:${cell}px;background-image:url(${data.pictures[layer.name]});` +
          `background-position:-${left + rank * grid.step}px -${top}px`,
      }));
    });
    const stats = el("div", { class: "stats" },
      `mean ${num(channel.mean)} · std ${num(channel.std)} · min ${num(channel.min)} · max ${num(channel.max)} · ` +
      `zeros ${(100 * (channel.zero_fraction ?? 0)).toFixed(1)}% · fires in ${(100 * (channel.fire_fraction ?? 0)).toFixed(1)}% of images`);
    const label = el("div", { class: "label" }, el("b", {}, `channel ${channel.channel}`), channel.dead ? " dead" : "");
    const best = channel.top[0];
    const body = el("div", {}, crops, stats);
    if (best) {
      const rendered = (record.renders || {})[best.image];
      if (rendered) {
        body.append(el("div", {}, el("a", { href: rendered, class: "render" }, "full render of its top image")));
      } else {
        const command = `fmonnx render ${quote(record.model)} ${quote(best.image)} -o ${quote("renders/" + stem(best.image))}`;
        body.append(el("div", {}, el("span", { class: "muted" }, "full render of its top image: "),
          el("span", { class: "command" }, command)));
      }
    }
    return el("div", { class: "channel" + (channel.dead ? " dead" : ""), "data-channel": channel.channel }, label, body);
  }

  function show(index) {
    current = index;
    const layer = record.layers[index];
    buttons.forEach((button, at) => button.classList.toggle("current", at === index));
    $("layer-title").textContent = `${layer.name} [${layer.op}] ${layer.shape.join(" x ")}`;
    const field = layer.receptive_field;
    $("layer-meta").textContent = (field ? `receptive field ${field.size.join(" x ")} px, stride ${field.stride.join(" x ")}, offset ${field.offset.join(", ")}` : "receptive field: the whole image") +
      (layer.crops_show === "activation" ? " · the field covers most of the image: each image is shown dimmed where the channel is low" : " · crops of the field at the maximum");
    const hide = $("hide-dead").checked;
    const channels = layer.channels.filter((channel) => !(hide && channel.dead)).slice().sort(orders[$("sort").value]);
    $("channels").replaceChildren(...channels.map((channel) => channelRow(layer, channel)));
  }
  $("sort").addEventListener("change", () => show(current));
  $("hide-dead").addEventListener("change", () => show(current));
  document.addEventListener("keydown", (event) => {
    if (event.target.tagName === "SELECT") return;
    if (event.key === "ArrowDown" && current + 1 < record.layers.length) { show(current + 1); event.preventDefault(); }
    if (event.key === "ArrowUp" && current > 0) { show(current - 1); event.preventDefault(); }
  });
  if (record.layers.length) show(0);
})();
