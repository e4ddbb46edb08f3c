/* fmonnx report: draws every layer's feature maps from the data scripts under report/.
 *
 * Hand-written, no dependencies, no build step. Opened from disk (file://) a page
 * may neither fetch() files nor read the pixels of a PNG loaded by path, so each
 * layer's maps come as a script calling fmonnxData(file, base64 PNG): a grayscale
 * atlas of per-channel min-max uint8 levels q. With the channel's min, max, mean
 * and std (in the data block) q maps back to x = min + q / 255 * (max - min),
 * from which every normalization, colormap and order is drawn here.
 */
(function () {
  "use strict";

  var D = JSON.parse(document.getElementById("fmonnx-data").textContent);
  var LIST_SIDE = 768; // list grids keep at most this many canvas pixels a side (subsampled beyond)
  var DETAIL_SIDE = 2048;
  var LIST_WIDTH = 480; // list grids are magnified by the largest whole factor that stays within this width
  var PAGE = 256; // channels per page in the large layer view
  var SIDE_BY_SIDE = 6; // images shown next to each other at most
  var TOP = 8; // images listed per channel as the ones exciting it most
  var CACHE_BYTES = 256 * 1024 * 1024; // decoded atlases kept; least recently used go first

  function $(id) { return document.getElementById(id); }

  function el(tag, props, children) {
    var node = document.createElement(tag);
    Object.keys(props || {}).forEach(function (key) {
      if (key === "text") node.textContent = props[key];
      else if (key === "className") node.className = props[key];
      else node.setAttribute(key, props[key]);
    });
    (children || []).forEach(function (child) { if (child) node.appendChild(child); });
    return node;
  }

  function decode64(text) {
    var raw = atob(text), bytes = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes;
  }

  function fmt(value) {
    if (value === null || value === undefined) return "?";
    if (value === 0) return "0";
    var size = Math.abs(value);
    return size >= 1e4 || size < 1e-3 ? value.toExponential(2) : String(Number(value.toPrecision(4)));
  }

  function percent(value) { return (100 * value).toFixed(1) + "%"; }

  var CMAPS = {};
  Object.keys(D.colormaps).forEach(function (name) { CMAPS[name] = decode64(D.colormaps[name]); });

  var state = {
    cmap: CMAPS[D.options.cmap] ? D.options.cmap : Object.keys(CMAPS)[0],
    norm: D.options.normalization || "standardize",
    sort: "index",
    hideDead: false,
    image: D.images.length > SIDE_BY_SIDE ? "0" : "all",
    layer: 0,
    detail: null, // {mode: "layer" | "channel", layer, channel, page}
    version: 0
  };

  /* ---- data: one script per (image, layer), decoded once, kept in a small LRU ---- */

  var cache = new Map(), cachedBytes = 0, waiting = {};

  window.fmonnxData = function (file, png) {
    var request = waiting[file];
    if (!request) return;
    delete waiting[file];
    var image = new Image();
    image.onload = function () {
      var canvas = document.createElement("canvas");
      canvas.width = image.width;
      canvas.height = image.height;
      var context = canvas.getContext("2d", { willReadFrequently: true });
      context.drawImage(image, 0, 0);
      var rgba = context.getImageData(0, 0, canvas.width, canvas.height).data;
      var levels = new Uint8Array(canvas.width * canvas.height);
      for (var i = 0, j = 0; i < levels.length; i++, j += 4) levels[i] = rgba[j];
      request.resolve({ levels: levels, width: canvas.width });
    };
    image.onerror = function () { request.reject(new Error("cannot decode " + file)); };
    image.src = "data:image/png;base64," + png;
  };

  function trim() {
    var keys = Array.from(cache.keys());
    for (var i = 0; i < keys.length - 1 && cachedBytes > CACHE_BYTES; i++) {
      cachedBytes -= cache.get(keys[i]).bytes;
      cache.delete(keys[i]);
    }
  }

  function load(file) {
    var hit = cache.get(file);
    if (hit) {
      cache.delete(file);
      cache.set(file, hit);
      return hit.promise;
    }
    var entry = { bytes: 0 };
    entry.promise = new Promise(function (resolve, reject) {
      waiting[file] = { resolve: resolve, reject: reject };
      var script = document.createElement("script");
      script.src = file;
      script.onload = function () {
        script.remove();
        if (waiting[file]) { delete waiting[file]; reject(new Error(file + " holds no map data")); }
      };
      script.onerror = function () {
        script.remove();
        delete waiting[file];
        reject(new Error("cannot load " + file + " (is the report/ folder beside index.html?)"));
      };
      document.head.appendChild(script);
    }).then(function (atlas) {
      entry.bytes = atlas.levels.length;
      cachedBytes += entry.bytes;
      trim();
      return atlas;
    }, function (error) {
      cache.delete(file);
      throw error;
    });
    cache.set(file, entry);
    return entry.promise;
  }

  /* ---- what to show ---- */

  function layerOf(image, name) { return D.images[image].layers[name] || null; }

  function shownImages() {
    if (D.images.length === 1) return [0];
    if (state.image !== "all") return [Number(state.image)];
    return D.images.slice(0, SIDE_BY_SIDE).map(function (_, index) { return index; });
  }

  /* channel indices in display order: the same for every image shown, so they line up */
  function channelOrder(name, images) {
    var layers = images.map(function (image) { return layerOf(image, name); }).filter(Boolean);
    if (!layers.length || !layers[0].channels) return [];
    var count = layers[0].shape[0], order = [], means = new Float64Array(count);
    for (var c = 0; c < count; c++) {
      var dead = true;
      for (var k = 0; k < layers.length; k++) {
        means[c] += layers[k].channels.mean[c] / layers.length;
        dead = dead && layers[k].channels.dead[c];
      }
      if (!(state.hideDead && dead)) order.push(c);
    }
    if (state.sort === "mean") order.sort(function (a, b) { return means[b] - means[a] || a - b; });
    if (state.sort === "weight") {
      /* the first shown image's weights: one order, so the images side by side line up */
      var weights = layers[0].class_weights || [];
      var weight = function (c) { var w = weights[c]; return w === null || w === undefined ? -Infinity : w; };
      order.sort(function (a, b) { return weight(b) - weight(a) || a - b; });
    }
    return order;
  }

  /* q -> normalized 0..255 -> RGB, for one channel; mirrors fmonnx/normalize.py */
  function colourTable(layer, c) {
    var ch = layer.channels, colours = CMAPS[state.cmap], table = new Uint8Array(768);
    var low = ch.min[c], span = ch.max[c] - ch.min[c], dead = ch.dead[c];
    var layerLow = layer.stats.min, layerSpan = layer.stats.max - layer.stats.min;
    for (var q = 0; q < 256; q++) {
      var x = low + q / 255 * span, v;
      if (state.norm === "minmax") v = dead ? 0 : q;
      else if (state.norm === "layer") v = layerSpan > 0 && !layer.stats.flat ? (x - layerLow) / layerSpan * 255 : 0;
      else v = dead || !(ch.std[c] > 0) ? 128 : (x - ch.mean[c]) / ch.std[c] * 64 + 128;
      v = v < 0 ? 0 : v > 255 ? 255 : Math.floor(v);
      table[3 * q] = colours[3 * v];
      table[3 * q + 1] = colours[3 * v + 1];
      table[3 * q + 2] = colours[3 * v + 2];
    }
    return table;
  }

  function gridGeometry(layer, count, maxSide, columns) {
    var tileH = layer.data.tile[0], tileW = layer.data.tile[1], n = Math.max(count, 1);
    var cols = columns || Math.max(1, Math.min(n, Math.ceil(Math.sqrt(n * tileH / tileW))));
    var rows = Math.ceil(n / cols), step = 1;
    while (step < Math.max(tileH, tileW) &&
           Math.max(cols * (Math.ceil(tileW / step) + 1), rows * (Math.ceil(tileH / step) + 1)) - 1 > maxSide) step++;
    var h = Math.ceil(tileH / step), w = Math.ceil(tileW / step);
    return { cols: cols, rows: rows, step: step, h: h, w: w, width: cols * (w + 1) - 1, height: rows * (h + 1) - 1 };
  }

  function paint(canvas, atlas, layer, channels, geo) {
    canvas.width = geo.width;
    canvas.height = geo.height;
    var context = canvas.getContext("2d"), picture = context.createImageData(geo.width, geo.height);
    var px = picture.data, levels = atlas.levels, atlasW = atlas.width;
    var tileH = layer.data.tile[0], tileW = layer.data.tile[1], atlasCols = layer.data.columns;
    px.fill(255);
    for (var i = 0; i < channels.length; i++) {
      var c = channels[i], table = colourTable(layer, c);
      var sx = (c % atlasCols) * tileW, sy = Math.floor(c / atlasCols) * tileH;
      var dx = (i % geo.cols) * (geo.w + 1), dy = Math.floor(i / geo.cols) * (geo.h + 1);
      for (var y = 0; y < geo.h; y++) {
        var src = (sy + y * geo.step) * atlasW + sx, dst = ((dy + y) * geo.width + dx) * 4;
        for (var x = 0; x < geo.w; x++, dst += 4) {
          var t = levels[src + x * geo.step] * 3;
          px[dst] = table[t];
          px[dst + 1] = table[t + 1];
          px[dst + 2] = table[t + 2];
        }
      }
    }
    context.putImageData(picture, 0, 0);
  }

  /* CSS width of a grid: a whole magnification of its canvas, so `pixelated` gives every value the same square.
   * The list takes at least the layer's display scale; the detail panel (room) the largest whole factor that fits. */
  function gridWidth(layer, geo, room) {
    if (room) return room >= geo.width ? geo.width * Math.floor(room / geo.width) : room;
    return geo.width * Math.max(layer.display_scale || 1, Math.floor(LIST_WIDTH / geo.width));
  }

  /* ---- a drawable grid: frame (keeps its size while empty), canvas, note ---- */

  var grids = [], visible = new Set();
  var observer = new IntersectionObserver(function (entries) {
    entries.forEach(function (entry) {
      var grid = entry.target.grid;
      if (entry.isIntersecting) {
        visible.add(grid);
        draw(grid);
      } else {
        visible.delete(grid);
        grid.canvas.width = 0; // frees the pixels; the frame keeps its size
        grid.canvas.height = 0;
        grid.drawn = -1;
        grid.frame.classList.remove("ready");
      }
    });
  }, { rootMargin: "800px 0px" });

  function makeGrid(image, name, channels, maxSide, displayWidth, columns) {
    var layer = layerOf(image, name);
    var frame = el("div", { className: "frame" }), canvas = el("canvas"), note = el("div", { className: "note" });
    frame.appendChild(canvas);
    frame.appendChild(note);
    var grid = { image: image, name: name, layer: layer, channels: channels, frame: frame, canvas: canvas, note: note, drawn: -1 };
    frame.grid = grid;
    if (!layer || !layer.data) {
      frame.style.width = "160px";
      frame.style.height = "40px";
      note.textContent = layer ? "no map data (rendered without the report)" : "not drawn for this image";
      return grid;
    }
    grid.geo = gridGeometry(layer, channels.length, maxSide, columns);
    frame.style.aspectRatio = grid.geo.width + " / " + grid.geo.height;
    frame.style.width = gridWidth(layer, grid.geo, displayWidth) + "px";
    if (!channels.length) note.textContent = "every channel is dead (hidden)";
    canvas.addEventListener("click", function (event) {
      var c = hit(grid, event);
      if (c >= 0) openChannel(D.layers.findIndex(function (l) { return l.name === name; }), c);
    });
    canvas.addEventListener("mousemove", function (event) { tip(grid, event); });
    canvas.addEventListener("mouseleave", function () { $("tip").hidden = true; });
    grids.push(grid);
    observer.observe(frame);
    return grid;
  }

  function draw(grid) {
    if (!grid.geo || grid.drawn === state.version || !grid.channels.length) return;
    var version = state.version;
    grid.drawn = version;
    grid.note.textContent = "loading\u2026";
    load(grid.layer.data.file).then(function (atlas) {
      if (grid.drawn !== version || !visible.has(grid)) return;
      paint(grid.canvas, atlas, grid.layer, grid.channels, grid.geo);
      grid.note.textContent = "";
      grid.frame.classList.add("ready");
    }).catch(function (error) {
      grid.note.textContent = error.message;
    });
  }

  function hit(grid, event) {
    var box = grid.canvas.getBoundingClientRect(), geo = grid.geo;
    if (!box.width || !box.height) return -1;
    var x = (event.clientX - box.left) * geo.width / box.width, y = (event.clientY - box.top) * geo.height / box.height;
    var col = Math.floor(x / (geo.w + 1)), row = Math.floor(y / (geo.h + 1)), index = row * geo.cols + col;
    return col >= 0 && col < geo.cols && row >= 0 && index < grid.channels.length ? grid.channels[index] : -1;
  }

  function tip(grid, event) {
    var c = hit(grid, event), box = $("tip");
    if (c < 0) { box.hidden = true; return; }
    var ch = grid.layer.channels;
    box.textContent = "channel " + c + " \u00b7 mean " + fmt(ch.mean[c]) + " \u00b7 max " + fmt(ch.max[c]) +
      (ch.dead[c] ? " \u00b7 dead" : "");
    box.style.left = event.clientX + 12 + "px";
    box.style.top = event.clientY + 12 + "px";
    box.hidden = false;
  }

  function forget(container) {
    grids = grids.filter(function (grid) {
      if (!container.contains(grid.frame)) return true;
      observer.unobserve(grid.frame);
      visible.delete(grid);
      return false;
    });
  }

  /* ---- header ---- */

  function header() {
    $("model-name").textContent = D.model_name;
    $("model-name").title = D.model;
    var source = D.source || {}, input = D.input || {}, seconds = D.seconds || {};
    var facts = [
      ["framework", (source.framework || "unknown") + (source.producer ? " (" + source.producer + " " + (source.producer_version || "") + ")" : "")],
      ["provider", D.provider],
      ["input", (input.name || "?") + " " + JSON.stringify(input.shape || []) + " " + (input.layout || "")],
      ["layers", String(D.layers.length)],
      ["images", String(D.images.length)],
      ["written with", (D.options.normalization || "?") + ", " + (D.options.cmap || "?")],
      ["time", seconds.total !== undefined ? seconds.total.toFixed(2) + " s" : "?"],
      ["fmonnx", D.fmonnx_version]
    ];
    facts.forEach(function (fact) {
      $("meta").appendChild(el("div", {}, [el("dt", { text: fact[0] }), el("dd", { text: fact[1] })]));
    });
    D.images.forEach(function (image) {
      image.problems.forEach(function (problem) { $("problems").appendChild(el("p", { text: image.name + ": " + problem })); });
    });
    D.images.slice(0, 12).forEach(function (image) {
      var pre = image.preprocess || {}, resize = pre.resize || [], source = pre.source_size || [];
      var lines = [image.name, pre.description || pre.preset || "",
        "resized " + source.join("\u00d7") + " \u2192 " + resize.join("\u00d7") + (pre.resample ? " (" + pre.resample + ")" : ""),
        pre.value_range ? "values " + fmt(pre.value_range[0]) + " \u2026 " + fmt(pre.value_range[1]) + " " + (pre.dtype || "") : ""];
      var caption = el("figcaption");
      lines.forEach(function (line) { if (line) caption.appendChild(el("div", { text: line })); });
      var figure = el("figure", { title: image.image }, [image.picture ? el("img", { src: image.picture, alt: image.name }) : null, caption]);
      $("inputs").appendChild(figure);
    });
    if (D.images.length > 12) $("inputs").appendChild(el("p", { className: "muted", text: "and " + (D.images.length - 12) + " more images" }));
  }

  /* which image's top class orders the channels, said on the order control */
  function sortTitle() {
    var image = D.images[shownImages()[0]], target = image.class_target;
    $("sort").title = state.sort !== "weight" ? "" : !target ? image.name + " has no class weights (see its problems)" :
      "ordered by the Grad-CAM weights of " + image.name + " for its top class " +
      (target.label !== null && target.label !== undefined ? target.label + " " : "") + JSON.stringify(target.index) +
      " (score " + fmt(target.score) + ")" + (shownImages().length > 1 ? "; the other images follow its order" : "");
  }

  function controls() {
    Object.keys(CMAPS).forEach(function (name) { $("cmap").appendChild(el("option", { value: name, text: name })); });
    $("cmap").value = state.cmap;
    $("norm").value = state.norm;
    if (D.class_weights) {  /* render --class-weights: each channel's Grad-CAM weight for the image's top class */
      $("sort").appendChild(el("option", { value: "weight", text: "by weight for the top class",
        title: "Grad-CAM weight of each channel for the image's top class, largest first; with images side by " +
          "side, the first shown image's weights order them all" }));
    }
    if (D.images.length > 1) {
      $("image-choice").hidden = false;
      var all = D.images.length > SIDE_BY_SIDE ? "first " + SIDE_BY_SIDE + ", side by side" : "all, side by side";
      $("image").appendChild(el("option", { value: "all", text: all }));
      D.images.forEach(function (image, index) { $("image").appendChild(el("option", { value: String(index), text: image.name })); });
      $("image").value = state.image;
    }
    $("cmap").addEventListener("change", function () { state.cmap = this.value; redraw(); });
    $("norm").addEventListener("change", function () { state.norm = this.value; redraw(); });
    $("sort").addEventListener("change", function () { state.sort = this.value; sortTitle(); rebuild(); });
    $("hide-dead").addEventListener("change", function () { state.hideDead = this.checked; rebuild(); });
    $("image").addEventListener("change", function () { state.image = this.value; sortTitle(); rebuild(); });
    $("close").addEventListener("click", closeDetail);
  }

  /* ---- the list of layers ---- */

  function layerSummary(name, images) {
    var parts = [], dead = 0, low = Infinity, high = -Infinity;
    images.forEach(function (image) {
      var layer = layerOf(image, name);
      if (!layer || !layer.stats) return;
      dead = Math.max(dead, layer.stats.dead_channels);
      low = Math.min(low, layer.stats.min);
      high = Math.max(high, layer.stats.max);
    });
    if (low <= high) parts.push(el("span", { className: "muted", text: "range " + fmt(low) + " \u2026 " + fmt(high) }));
    parts.push(el("span", { className: dead ? "dead" : "muted", text: dead + " dead" }));
    return parts;
  }

  function buildList() {
    var main = $("layers"), images = shownImages();
    forget(main);
    main.textContent = "";
    D.layers.forEach(function (info, index) {
      var shape = (layerOf(images[0], info.name) || info).shape || [];
      var open = el("button", { type: "button", text: String(index).padStart(3, "0") + "  " + info.name, title: info.tensor || "" });
      open.addEventListener("click", function () { select(index); openLayer(index); });
      var title = el("h2", {}, [open, el("span", { className: "op", text: info.op }),
        el("span", { text: shape.join("\u00d7") })].concat(layerSummary(info.name, images))
        .concat(info.note ? [el("span", { className: "layer-note", text: info.note })] : []));
      var maps = el("div", { className: "maps" });
      var order = channelOrder(info.name, images);
      images.forEach(function (image) {
        var grid = makeGrid(image, info.name, order, LIST_SIDE, null, null);
        var layer = layerOf(image, info.name), caption = images.length > 1 ? D.images[image].name : "";
        if (layer && layer.stats && images.length > 1) caption += " \u00b7 " + layer.stats.dead_channels + " dead";
        var figure = el("figure", { className: "map", "data-image": String(image) }, [grid.frame, caption ? el("figcaption", { text: caption }) : null]);
        if (images.length > 1) figure.style.maxWidth = "calc(" + (100 / images.length).toFixed(2) + "% - 12px)";
        maps.appendChild(figure);
      });
      var section = el("section", { className: "layer" + (index === state.layer ? " current" : ""), id: "layer-" + index,
        "data-name": info.name, "data-index": String(index) }, [title, maps]);
      main.appendChild(section);
    });
  }

  function redraw() {
    state.version++;
    visible.forEach(draw);
    renderDetail();
  }

  function rebuild() {
    state.version++;
    buildList();
    renderDetail();
  }

  function select(index) {
    var old = $("layer-" + state.layer);
    if (old) old.classList.remove("current");
    state.layer = Math.max(0, Math.min(D.layers.length - 1, index));
    var section = $("layer-" + state.layer);
    if (section) section.classList.add("current");
    return section;
  }

  /* ---- the detail panel: one layer large, or one channel at full resolution ---- */

  function openLayer(index) {
    select(index);
    state.detail = { mode: "layer", layer: index, channel: -1, page: 0 };
    renderDetail();
  }

  function openChannel(index, channel) {
    select(index);
    state.detail = { mode: "channel", layer: index, channel: channel, page: 0 };
    renderDetail();
  }

  function closeDetail() {
    state.detail = null;
    renderDetail();
  }

  function statsTable(rows, images, name, channel) {
    var head = el("tr", {}, rows.map(function (row) { return el("th", { text: row }); }));
    var body = images.map(function (image) {
      var layer = layerOf(image, name);
      if (!layer || !layer.channels) return null;
      var ch = layer.channels, s = layer.stats, cells, dead;
      if (channel >= 0) {
        dead = ch.dead[channel];
        cells = [D.images[image].name, fmt(ch.mean[channel]), fmt(ch.std[channel]), fmt(ch.min[channel]),
          fmt(ch.max[channel]), percent(ch.zero_fraction[channel]), dead ? "dead" : "no"];
      } else {
        dead = s.dead_channels > 0;
        cells = [D.images[image].name, fmt(s.mean), fmt(s.std), fmt(s.min), fmt(s.max), percent(s.zero_fraction),
          s.dead_channels + " of " + s.channels];
      }
      return el("tr", {}, cells.map(function (cell, i) { return el("td", { text: cell, className: i === 6 && dead ? "dead" : "" }); }));
    });
    return el("table", { className: "stats" }, [head].concat(body));
  }

  function channelCanvas(image, name, channel, className) {
    var layer = layerOf(image, name), canvas = el("canvas", { className: className || "" });
    if (!layer || !layer.data) return canvas;
    var geo = gridGeometry(layer, 1, DETAIL_SIDE, 1);
    load(layer.data.file).then(function (atlas) {
      paint(canvas, atlas, layer, [channel], geo);
    }).catch(function (error) { canvas.title = error.message; });
    return canvas;
  }

  function view(image, name, channel, kind, width) {
    var layer = layerOf(image, name), picture = D.images[image].picture, box = el("div", { className: "view" + (kind === "overlay" ? " overlay" : "") });
    box.style.width = width + "px";
    var tile = layer && layer.data ? layer.data.tile : [1, 1], pre = D.images[image].preprocess || {};
    var size = pre.resize || tile;
    box.style.aspectRatio = (kind === "map" ? tile[1] + " / " + tile[0] : size[1] + " / " + size[0]);
    if (kind !== "map" && picture) box.appendChild(el("img", { src: picture, alt: D.images[image].name }));
    if (kind !== "photo") {
      var canvas = channelCanvas(image, name, channel, kind === "map" ? "map-px" : "");
      if (kind === "overlay") canvas.style.opacity = $("overlay-opacity") ? $("overlay-opacity").value : 0.6;
      box.appendChild(canvas);
    }
    return box;
  }

  function renderDetail() {
    var panel = $("detail"), body = $("detail-body");
    forget(body);
    body.textContent = "";
    var detail = state.detail;
    if (!detail) {
      panel.hidden = true;
      delete panel.dataset.mode;
      return;
    }
    var info = D.layers[detail.layer], images = shownImages(), order = channelOrder(info.name, images);
    panel.hidden = false;
    panel.dataset.mode = detail.mode;
    panel.dataset.layer = info.name;
    var shape = (layerOf(images[0], info.name) || info).shape || [];
    if (detail.mode === "layer") {
      delete panel.dataset.channel;
      body.appendChild(el("h2", { text: info.name }));
      if (info.note) body.appendChild(el("p", { className: "layer-note", text: info.note }));
      var line = el("p", { className: "muted", text: info.op + " \u00b7 " + shape.join("\u00d7") + " \u00b7 tensor " + info.tensor +
        " \u00b7 click a channel for its detail \u00b7 " });
      images.forEach(function (image) {
        var layer = layerOf(image, info.name);
        if (layer && layer.png) line.appendChild(el("a", { href: layer.png, text: (images.length > 1 ? D.images[image].name + " " : "") + "PNG " }));
      });
      body.appendChild(line);
      body.appendChild(statsTable(["image", "mean", "std", "min", "max", "zeros", "dead"], images, info.name, -1));
      var pages = Math.max(1, Math.ceil(order.length / PAGE));
      detail.page = Math.min(detail.page, pages - 1);
      if (pages > 1) {
        var previous = el("button", { type: "button", className: "link", text: "\u2190 previous" });
        var next = el("button", { type: "button", className: "link", text: "next \u2192" });
        previous.disabled = detail.page === 0;
        next.disabled = detail.page === pages - 1;
        previous.addEventListener("click", function () { detail.page--; renderDetail(); });
        next.addEventListener("click", function () { detail.page++; renderDetail(); });
        var first = detail.page * PAGE;
        body.appendChild(el("div", { className: "pager" }, [previous,
          el("span", { text: "channels " + (first + 1) + "\u2013" + Math.min(order.length, first + PAGE) + " of " + order.length }), next]));
      }
      var slice = order.slice(detail.page * PAGE, (detail.page + 1) * PAGE);
      var width = Math.floor((panel.clientWidth - 40) / images.length) - 8;
      var maps = el("div", { className: "maps" });
      images.forEach(function (image) {
        var grid = makeGrid(image, info.name, slice, DETAIL_SIDE, width, null);
        maps.appendChild(el("figure", { className: "map" }, [grid.frame, images.length > 1 ? el("figcaption", { text: D.images[image].name }) : null]));
      });
      body.appendChild(maps);
      return;
    }
    var channel = detail.channel, position = order.indexOf(channel);
    panel.dataset.channel = String(channel);
    var back = el("button", { type: "button", className: "link", text: "\u2190 all channels of " + info.name });
    back.addEventListener("click", function () { openLayer(detail.layer); });
    body.appendChild(back);
    body.appendChild(el("h2", { text: info.name + " \u00b7 channel " + channel }));
    body.appendChild(el("p", { className: "muted", text: info.op + " \u00b7 " + shape.join("\u00d7") +
      (position >= 0 ? " \u00b7 " + (position + 1) + " of " + order.length + " in this order (\u2190 \u2192)" : " \u00b7 hidden in this view") }));
    var opacity = el("input", { type: "range", id: "overlay-opacity", min: "0", max: "1", step: "0.05", value: "0.6" });
    opacity.addEventListener("input", function () {
      body.querySelectorAll(".overlay canvas").forEach(function (canvas) { canvas.style.opacity = opacity.value; });
    });
    body.appendChild(el("label", { className: "muted", text: "overlay opacity " }, [opacity]));
    var side = images.length > 2 ? 150 : 224;
    images.forEach(function (image) {
      var row = el("div", { className: "channel-row", "data-image": String(image) }, [
        el("figure", {}, [view(image, info.name, channel, "map", side), el("figcaption", { text: "channel " + channel + ", full resolution" })]),
        el("figure", {}, [view(image, info.name, channel, "photo", side), el("figcaption", { text: D.images[image].name + ", as fed" })]),
        el("figure", {}, [view(image, info.name, channel, "overlay", side), el("figcaption", { text: "overlay, upsampled" })])
      ]);
      body.appendChild(row);
    });
    body.appendChild(statsTable(["image", "mean", "std", "min", "max", "zeros", "dead"], images, info.name, channel));
    if (D.images.length > 1) {
      var ranked = D.images.map(function (_, image) { return image; }).filter(function (image) {
        var layer = layerOf(image, info.name);
        return layer && layer.channels;
      }).sort(function (a, b) {
        return layerOf(b, info.name).channels.mean[channel] - layerOf(a, info.name).channels.mean[channel];
      }).slice(0, TOP);
      body.appendChild(el("h3", { text: "Images that excite channel " + channel + " most (by mean activation)" }));
      var top = el("div", { className: "top-images" });
      ranked.forEach(function (image) {
        var mean = layerOf(image, info.name).channels.mean[channel];
        top.appendChild(el("figure", {}, [view(image, info.name, channel, "overlay", 140),
          el("figcaption", { text: D.images[image].name + " \u00b7 mean " + fmt(mean) })]));
      });
      body.appendChild(top);
    }
  }

  /* ---- keyboard: up/down layers, left/right channels, Esc closes ---- */

  /* the layer the reader is looking at: the selected one while on screen, else the first on screen */
  function currentLayer() {
    var top = $("controls").getBoundingClientRect().bottom, selected = $("layer-" + state.layer);
    var inView = function (box) { return box.bottom > top && box.top < window.innerHeight; };
    if (state.detail || !selected || inView(selected.getBoundingClientRect())) return state.layer;
    var sections = document.querySelectorAll("section.layer");
    for (var i = 0; i < sections.length; i++) {
      if (sections[i].getBoundingClientRect().bottom > top) return Number(sections[i].dataset.index);
    }
    return state.layer;
  }

  function moveLayer(step) {
    var from = currentLayer();
    var section = select(from === state.layer ? state.layer + step : from);
    if (section) section.scrollIntoView({ block: "start" });
    if (!state.detail) return;
    if (state.detail.mode === "layer") { openLayer(state.layer); return; }
    var order = channelOrder(D.layers[state.layer].name, shownImages());
    if (order.length) openChannel(state.layer, order.indexOf(state.detail.channel) >= 0 ? state.detail.channel : order[0]);
    else openLayer(state.layer);
  }

  function moveChannel(step) {
    select(currentLayer());
    var order = channelOrder(D.layers[state.layer].name, shownImages());
    if (!order.length) return;
    var detail = state.detail;
    if (!detail || detail.mode !== "channel" || detail.layer !== state.layer) {
      openChannel(state.layer, step > 0 ? order[0] : order[order.length - 1]);
      return;
    }
    var position = order.indexOf(detail.channel) + step;
    openChannel(state.layer, order[Math.max(0, Math.min(order.length - 1, position))]);
  }

  document.addEventListener("keydown", function (event) {
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    if (event.target.closest && event.target.closest("select, input, textarea")) return;
    if (event.key === "ArrowDown") moveLayer(1);
    else if (event.key === "ArrowUp") moveLayer(-1);
    else if (event.key === "ArrowRight") moveChannel(1);
    else if (event.key === "ArrowLeft") moveChannel(-1);
    else if (event.key === "Escape" && state.detail) closeDetail();
    else if (event.key === "Enter" && !state.detail) openLayer(currentLayer());
    else return;
    event.preventDefault();
  });

  /* for tests and the curious: the normalized 0..255 values the page draws for one channel */
  window.fmonnxReport = {
    state: state,
    channelValues: function (image, name, channel) {
      var layer = layerOf(image, name);
      return load(layer.data.file).then(function (atlas) {
        var ch = layer.channels, low = ch.min[channel], span = ch.max[channel] - low, values = [];
        var tileH = layer.data.tile[0], tileW = layer.data.tile[1], cols = layer.data.columns;
        var sx = (channel % cols) * tileW, sy = Math.floor(channel / cols) * tileH;
        var saved = state.cmap;
        state.cmap = "gray";
        var table = colourTable(layer, channel);
        state.cmap = saved;
        for (var y = 0; y < tileH; y++) {
          for (var x = 0; x < tileW; x++) values.push(table[3 * atlas.levels[(sy + y) * atlas.width + sx + x]]);
        }
        return { values: values, low: low, span: span };
      });
    }
  };

  header();
  controls();
  buildList();
})();
