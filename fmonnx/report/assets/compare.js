"use strict";
// The compare page: figures of every paired layer from the inlined data, ranked, with each
// layer's worst channels (A | B | |A - B|) in a side panel. Nothing is fetched.
(function () {
  const data = JSON.parse(document.getElementById("fmonnx-compare").textContent);
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
  const db = (value) => (value === Infinity ? "inf" : value === -Infinity ? "-inf" : value.toFixed(1));
  const num = (value) => (value === Infinity ? "inf" : value === 0 ? "0" : Math.abs(value) < 1e-3 || Math.abs(value) >= 1e4 ? value.toExponential(2) : value.toPrecision(4));
  const baseName = (path) => path.split(/[\\/]/).pop();

  $("name-a").textContent = baseName(record.a.model);
  $("name-b").textContent = baseName(record.b.model);
  document.title = `fmonnx compare: ${baseName(record.a.model)} vs ${baseName(record.b.model)}`;
  const tolerance = record.tolerance;
  const limits = [];
  if (tolerance.min_sqnr !== null) limits.push(`SQNR >= ${tolerance.min_sqnr} dB`);
  if (tolerance.rtol !== null || tolerance.atol !== null) limits.push(`|B - A| <= ${tolerance.atol || 0} + ${tolerance.rtol || 0} |A|`);
  const meta = [
    ["A", `${record.a.model} (${record.a.provider}, optimization ${record.a.optimization})`],
    ["B", `${record.b.model} (${record.b.provider}, optimization ${record.b.optimization})`],
    ["images", record.images.map(baseName).join(", ")],
    ["tolerance", limits.join(" and ")],
    ["fmonnx", record.fmonnx_version],
  ];
  for (const [key, value] of meta) $("meta").append(el("div", {}, el("dt", {}, key), el("dd", {}, value)));
  const verdict = $("verdict");
  if (record.first_divergence !== null) {
    const first = record.layers.find((layer) => layer.name === record.first_divergence);
    verdict.className = "bad";
    verdict.textContent = `First diverging layer: ${first.name} (SQNR ${db(first.sqnr_db)} dB, max abs error ${num(first.max_abs)}).`;
  } else if (!record.within_tolerance) {
    verdict.className = "bad";
    verdict.textContent = "Every layer is within tolerance, but a final output is not.";
  } else {
    verdict.className = "good";
    verdict.textContent = `All ${record.layers.length} paired layers and the final outputs are within tolerance.`;
  }
  for (const problem of record.problems) $("problems").append(el("p", {}, problem));

  // The columns are compare.json's metric table (stages.metrics): a new metric needs no line here.
  const styles = {
    db: (value) => db(value), cosine: (value) => value.toFixed(6), count: (value) => String(value), num: (value) => num(value),
  };
  const columns = record.metrics.filter((metric) => metric.column).map((metric) => [
    metric.column, (f) => (f[metric.name] === undefined || f[metric.name] === null ? "-" : (styles[metric.style] || num)(f[metric.name])),
    metric.style === "db" ? "sqnr" : "",
  ]);
  const outputs = $("outputs");
  outputs.append(el("tr", {}, el("th", {}, "output"), ...columns.map(([title]) => el("th", {}, title))));
  for (const output of record.outputs) {
    outputs.append(el("tr", { class: output.within_tolerance ? "" : "bad" }, el("td", { class: "mono" }, output.name),
      ...columns.map(([, cell, kind]) => el("td", { class: kind || "" }, cell(output)))));
  }
  if (!record.outputs.length) outputs.append(el("tr", {}, el("td", { class: "muted" }, "no final outputs were compared")));

  const hasNoise = record.layers.some((layer) => layer.noise_a || layer.noise_b);
  const finite = record.layers.map((layer) => layer.sqnr_db).filter(Number.isFinite);
  const scale = Math.max(1, ...finite);
  const table = $("layers");
  let shown = [];
  let current = -1;

  function render() {
    const order = $("sort").value;
    shown = record.layers.map((layer, index) => ({ layer, index }));
    if ($("failing").checked) shown = shown.filter(({ layer }) => !layer.within_tolerance);
    if (order === "sqnr") shown.sort((x, y) => (x.layer.sqnr_db - y.layer.sqnr_db) || (x.index - y.index));
    table.replaceChildren();
    const head = el("tr", {}, el("th", {}, "#"), el("th", {}, "layer"), el("th", {}, "C x H x W"),
      ...columns.map(([title]) => el("th", {}, title)), el("th", {}, ""));
    if (hasNoise) head.append(el("th", {}, "noise floor dB (A / B)"));
    table.append(el("thead", {}, head));
    const body = el("tbody");
    shown.forEach(({ layer, index }, row) => {
      const classes = [layer.within_tolerance ? "" : "bad", layer.name === record.first_divergence ? "first" : ""];
      const width = Number.isFinite(layer.sqnr_db) ? Math.max(0, layer.sqnr_db) / scale * 80 : 80;
      const tr = el("tr", { class: classes.join(" ").trim(), "data-layer": layer.name },
        el("td", { class: "muted" }, String(index)), el("td", {}, layer.name), el("td", {}, layer.shape.join("x")),
        ...columns.map(([, cell, kind]) => el("td", { class: kind || "" }, cell(layer))),
        el("td", {}, el("span", { class: "bar", style: `width:${width.toFixed(0)}px` })));
      if (hasNoise) {
        const floor = (noise) => (noise ? db(noise.sqnr_db) : "-");
        tr.append(el("td", {}, `${floor(layer.noise_a)} / ${floor(layer.noise_b)}`));
      }
      tr.addEventListener("click", () => open(row));
      body.append(tr);
    });
    table.append(body);
    current = -1;
  }

  function open(row) {
    if (row < 0 || row >= shown.length) return;
    current = row;
    const { layer } = shown[row];
    for (const tr of table.querySelectorAll("tbody tr")) tr.classList.toggle("current", tr.dataset.layer === layer.name);
    table.querySelectorAll("tbody tr")[row].scrollIntoView({ block: "nearest" });
    const detail = $("detail-body");
    detail.replaceChildren(el("h2", {}, layer.name));
    const facts = [
      `A: ${layer.a_tensor}`, `B: ${layer.b_tensor} (${layer.b_name}, paired by ${layer.paired_by})`,
      `SQNR ${db(layer.sqnr_db)} dB, max abs error ${num(layer.max_abs)}, cosine ${layer.cosine.toFixed(6)}, ` +
        `${layer.within_tolerance ? "within" : "past"} the tolerance`,
    ];
    if (layer.b_source) facts.splice(2, 0, `B's value traced from ${layer.b_source}`);
    if (layer.worst_channels_over_images) {
      const worst = layer.worst_channels_over_images.map((item) => `${item.channel} (rel L2 ${num(item.rel_l2)})`);
      facts.push(`Worst channels over all ${record.images.length} image(s): ${worst.join(", ")}`);
    }
    for (const fact of facts) detail.append(el("p", { class: "mono" }, fact));
    const picture = data.pictures[layer.name];
    if (picture) {
      detail.append(el("p", { class: "muted" }, `Channels ${layer.worst_channels.join(", ")} of the first image, worst first: ` +
        "A and B on A's range per channel (viridis), |A - B| from 0 to that range (magma): dark is agreement."));
      detail.append(el("img", { src: picture, alt: `A, B and |A - B| of ${layer.name}` }));
    }
    $("detail").hidden = false;
  }

  function close() { $("detail").hidden = true; }

  const unpaired = $("unpaired");
  for (const item of record.unpaired) {
    unpaired.append(el("p", {}, el("b", {}, `${item.side.toUpperCase()} `), el("span", { class: "mono" }, `${item.name} (${item.tensor})`), `: ${item.reason}`));
  }
  if (!record.unpaired.length) unpaired.append(el("p", { class: "muted" }, "every shown tensor of A and B is paired"));

  $("sort").addEventListener("change", render);
  $("failing").addEventListener("change", render);
  $("close").addEventListener("click", close);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") close();
    else if (event.key === "ArrowDown") { event.preventDefault(); open(Math.min(shown.length - 1, current + 1)); }
    else if (event.key === "ArrowUp") { event.preventDefault(); open(Math.max(0, current - 1)); }
  });
  render();
})();
