// geoens map explorer: the page's code. Data come from the <script> files of data/ (globals GEOENS_RUN,
// GEOENS_SUMMARY, GEOENS_DETAIL), so the page opens from file:// with no network.
(function () {
  "use strict";
  var RUN = window.GEOENS_RUN;
  var SUMMARY = window.GEOENS_SUMMARY || {};
  window.GEOENS_DETAIL = window.GEOENS_DETAIL || {};
  var LOG_HI = 100 * Math.log10(4 * Math.PI * 6371.0088 * 6371.0088); // the sphere, in 100 log10 km^2
  var CURVE_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39"];
  var NO_AREA = "#9a9a9a";

  var state = { testset: null, base: null, method: null, buckets: {}, photo: null, budgetLog: 5,
    curvesOn: {}, regionPixels: 0 };
  var map, pointLayer, markers = [], regionLayer = null, truthLayer = null;
  var levelCache = {};

  function $(id) { return document.getElementById(id); }
  function fmt(v, digits) {
    if (v === null || v === undefined || !isFinite(v)) return "n/a";
    return Number(v).toPrecision(digits || 4).replace(/\.?0+(e|$)/, "$1");
  }

  // viridis-like ramp of 100 log10 area in [0, LOG_HI]
  var RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  function rampColour(t) {
    t = Math.max(0, Math.min(1, t));
    var x = t * (RAMP.length - 1), i = Math.min(RAMP.length - 2, Math.floor(x)), f = x - i;
    var c = [0, 1, 2].map(function (k) { return Math.round(RAMP[i][k] + f * (RAMP[i + 1][k] - RAMP[i][k])); });
    return "#" + c.map(function (v) { return (v < 16 ? "0" : "") + v.toString(16); }).join("");
  }
  function areaColour(logArea) {
    return logArea === null || logArea === undefined ? NO_AREA : rampColour(logArea / LOG_HI);
  }

  function key() { return state.base + "|" + state.method; }
  function testsetInfo() {
    return RUN.testsets.filter(function (t) { return t.name === state.testset; })[0];
  }

  // ---------------------------------------------------------------------------------------- controls
  function fillSelect(sel, values, labels) {
    sel.innerHTML = "";
    values.forEach(function (v, i) {
      var o = document.createElement("option");
      o.value = v; o.textContent = labels ? labels[i] : v; sel.appendChild(o);
    });
  }
  function basesOf(ts) {
    var out = [];
    ts.methods.forEach(function (k) { var b = k.split("|")[0]; if (out.indexOf(b) < 0) out.push(b); });
    return out;
  }
  function methodsOf(ts, base) {
    return ts.methods.filter(function (k) { return k.split("|")[0] === base; })
      .map(function (k) { return k.slice(base.length + 1); });
  }
  function setTestset(name) {
    state.testset = name;
    var ts = testsetInfo();
    fillSelect($("base"), basesOf(ts));
    setBase(basesOf(ts)[0]);
    buildPoints();
    buildCurves();
    closePanel();
  }
  function setBase(base) {
    state.base = base;
    $("base").value = base;
    var ms = methodsOf(testsetInfo(), base);
    fillSelect($("method"), ms);
    // default: the base's full ensemble when there is one
    var full = ms.filter(function (m) { return /\+LS\+LC$/.test(m); })[0] || ms[0];
    setMethod(full);
  }
  function setMethod(m) {
    state.method = m;
    $("method").value = m;
    recolour();
    if (state.photo) renderPanel();
  }

  // ------------------------------------------------------------------------------------------ points
  function buildPoints() {
    if (pointLayer) map.removeLayer(pointLayer);
    var s = SUMMARY[state.testset];
    var renderer = L.canvas({ padding: 0.2 });
    markers = new Array(s.ids.length);
    var layers = [];
    for (var i = 0; i < s.ids.length; i++) {
      var m = L.circleMarker([s.lat[i], s.lon[i]], { renderer: renderer, radius: 4, weight: 0.6,
        color: "#333", fillOpacity: 0.85, fillColor: NO_AREA });
      m.photoIndex = i;
      m.on("click", onPointClick);
      markers[i] = m;
      layers.push(m);
    }
    pointLayer = L.featureGroup(layers).addTo(map);
    state.dimmed = false;
    if (layers.length) map.fitBounds(pointLayer.getBounds().pad(0.1), { maxZoom: 5, animate: false });
    recolour();
    applyFilter();
  }
  function onPointClick(e) { openPhoto(e.target.photoIndex); }
  function recolour() {
    var s = SUMMARY[state.testset];
    if (!s) return;
    var col = s.log_area[key()] || [];
    for (var i = 0; i < markers.length; i++) markers[i].setStyle({ fillColor: areaColour(col[i]) });
  }
  function applyFilter() {
    var s = SUMMARY[state.testset], shown = 0;
    for (var i = 0; i < markers.length; i++) {
      var b = s.bucket[i];
      var on = b < 0 || state.buckets[b] !== false;
      var has = pointLayer.hasLayer(markers[i]);
      if (on && !has) pointLayer.addLayer(markers[i]);
      if (!on && has) pointLayer.removeLayer(markers[i]);
      if (on) shown++;
    }
    var ts = testsetInfo();
    $("count").textContent = shown + " of " + ts.n + " photos shown; " + ts.n_detail + " with detail (click one)";
  }

  // ------------------------------------------------------------------------------------------- panel
  function dimPoints(on) {
    if (state.dimmed === on) return;
    state.dimmed = on;
    var st = { fillOpacity: on ? 0.15 : 0.85, opacity: on ? 0.2 : 1 };
    for (var i = 0; i < markers.length; i++) markers[i].setStyle(st);
  }
  function closePanel() {
    if (markers.length) dimPoints(false);
    state.photo = null;
    $("panel").classList.add("hidden");
    if (regionLayer) { map.removeLayer(regionLayer); regionLayer = null; }
    if (truthLayer) { map.removeLayer(truthLayer); truthLayer = null; }
  }
  function openPhoto(i) {
    var s = SUMMARY[state.testset];
    var k = s.detail[i];
    state.photo = { index: i, id: s.ids[i], detail: null, dkey: state.testset + "/" + k };
    dimPoints(true);
    centreOn(i);
    if (k < 0) { renderPanel(); return; }
    var have = window.GEOENS_DETAIL[state.photo.dkey];
    if (have) { state.photo.detail = have; startBudget(); renderPanel(); return; }
    var tag = document.createElement("script");
    var want = state.photo;
    tag.src = "data/detail/" + state.testset + "/" + k + ".js";
    tag.onload = function () {
      if (state.photo !== want) return;
      want.detail = window.GEOENS_DETAIL[want.dkey];
      startBudget();
      renderPanel();
    };
    document.body.appendChild(tag);
  }
  function rowOf(d) {
    return d.rows.filter(function (r) { return r.base === state.base && r.method === state.method; })[0];
  }
  function centreOn(i) {
    var s = SUMMARY[state.testset];
    map.setView([s.lat[i], s.lon[i]], Math.max(map.getZoom(), 2), { animate: false });
  }
  function startBudget() {
    // the slider starts at the photo's area to hit for the selected method, else at the searched budget,
    // else at the calibrated region of 90% coverage, else at 10^5 km^2
    var d = state.photo.detail, r = rowOf(d);
    var cal = ((d.cal || {})[key()] || {}).adaptive || {};
    var a = r && r.area_km2 ? r.area_km2 : d.budget_km2 || cal["0.9"] || 1e5;
    state.budgetLog = Math.log10(a) + 1e-9;
  }
  function renderPanel() {
    var p = state.photo, s = SUMMARY[state.testset];
    $("panel").classList.remove("hidden");
    $("photo-title").textContent = p.id;
    var body = $("photo-table").tBodies[0];
    body.innerHTML = "";
    var d = p.detail;
    if (!d) {
      $("photo-image").classList.add("hidden");
      $("photo-truth").textContent = "truth " + fmt(s.lat[p.index], 6) + ", " + fmt(s.lon[p.index], 7) +
        " (not in the detail sample: areas only)";
      testsetInfo().methods.forEach(function (k) {
        var la = s.log_area[k][p.index];
        addRow(body, k.split("|")[0], k.split("|")[1], la === null ? null : Math.pow(10, la / 100), null, null);
      });
      $("region-controls").classList.add("hidden");
      drawRegion();
      return;
    }
    if (d.image) { $("photo-image").src = d.image; $("photo-image").classList.remove("hidden"); }
    else $("photo-image").classList.add("hidden");
    $("photo-truth").textContent = d.truth ? "truth " + fmt(d.truth[0], 6) + ", " + fmt(d.truth[1], 7) +
      "; LS bucket " + (RUN.buckets[d.bucket] || "none") : "no truth (a searched photo)";
    d.rows.forEach(function (r) { addRow(body, r.base, r.method, r.area_km2, r.top1, r.gcd_km); });
    $("region-controls").classList.remove("hidden");
    fillCoverage();
    drawRegion();
  }
  function addRow(body, base, method, area, top1, gcd) {
    var tr = document.createElement("tr");
    tr.dataset.method = method;
    tr.dataset.base = base;
    if (base === state.base && method === state.method) tr.className = "selected";
    var cells = [method, fmt(area, 6), top1 ? fmt(top1[0], 5) + ", " + fmt(top1[1], 5) : "n/a", fmt(gcd, 6)];
    cells.forEach(function (c) { var td = document.createElement("td"); td.textContent = c; tr.appendChild(td); });
    tr.children[1].dataset.value = area === null || area === undefined ? "" : String(area);
    tr.children[3].dataset.value = gcd === null || gcd === undefined ? "" : String(gcd);
    body.appendChild(tr);
  }
  function fillCoverage() {
    var cal = (state.photo.detail.cal || {})[key()] || {};
    var sel = $("coverage");
    var opts = [""], labels = ["(none)"];
    // adaptive, fixed, then the adaptive region weighted to the test set's estimated mix (when calibrated)
    ["adaptive", "fixed", "adaptive weighted LS"].forEach(function (kind) {
      Object.keys(cal[kind] || {}).forEach(function (lev) {
        opts.push(kind + ":" + lev);
        labels.push(Math.round(lev * 100) + "% " + (kind === "adaptive weighted LS" ? "adaptive, weighted to this set's mix" : kind));
      });
    });
    fillSelect(sel, opts, labels);
    $("coverage-row").classList.toggle("hidden", opts.length === 1);
  }
  function onCoverage() {
    var v = $("coverage").value;
    if (!v) return;
    var parts = v.split(":");
    var a = state.photo.detail.cal[key()][parts[0]][parts[1]];
    state.budgetLog = a > 0 ? Math.log10(a) + 1e-9 : 0;
    drawRegion();
  }

  // ------------------------------------------------------------------------------------------ region
  function decodePng(uri, done) {
    var img = new Image();
    img.onload = function () {
      var c = document.createElement("canvas");
      c.width = img.width; c.height = img.height;
      var g = c.getContext("2d");
      g.drawImage(img, 0, 0);
      done(img.width, img.height, g.getImageData(0, 0, img.width, img.height).data);
    };
    img.src = uri;
  }
  // the region map: each map pixel's atom number (RGB), decoded once
  var regionMap = null;
  function withRegionMap(done) {
    if (regionMap) { done(regionMap); return; }
    decodePng(RUN.region_map, function (w, h, px) {
      var ids = new Int32Array(w * h);
      for (var i = 0; i < ids.length; i++) ids[i] = 65536 * px[4 * i] + 256 * px[4 * i + 1] + px[4 * i + 2];
      regionMap = { w: w, h: h, ids: ids };
      done(regionMap);
    });
  }
  // a photo's region: the level of each atom of the region map, then of each map pixel
  function levels(uri, done) {
    if (levelCache[uri]) { done(levelCache[uri]); return; }
    withRegionMap(function (rm) {
      decodePng(uri, function (w, h, px) {
        var lv = new Uint8Array(rm.ids.length);
        for (var i = 0; i < lv.length; i++) lv[i] = px[4 * rm.ids[i]];
        levelCache[uri] = { w: rm.w, h: rm.h, lv: lv };
        done(levelCache[uri]);
      });
    });
  }
  function levelArea(l) {
    var sc = RUN.scale;
    return sc.lo_km2 * Math.pow(sc.hi_km2 / sc.lo_km2, (l - 1) / (sc.n_levels - 1));
  }
  function drawRegion() {
    if (regionLayer) { map.removeLayer(regionLayer); regionLayer = null; }
    if (truthLayer) { map.removeLayer(truthLayer); truthLayer = null; }
    state.regionPixels = 0;
    var p = state.photo;
    if (!p) return;
    var s = SUMMARY[state.testset];
    truthLayer = L.circleMarker([s.lat[p.index], s.lon[p.index]], { radius: 7, color: "#0050d0", weight: 2.5,
      fill: false, pane: "truth" }).addTo(map);
    var budget = Math.pow(10, state.budgetLog);
    var hiLog = Math.log10(RUN.scale ? RUN.scale.hi_km2 : 5.1e8);
    $("budget").value = Math.round(1000 * state.budgetLog / hiLog);
    $("budget-value").textContent = fmt(budget, 3) + " km²";
    var uri = p.detail && p.detail.regions[key()];
    if (!uri) { $("region-info").textContent = "no ranked region for this method"; return; }
    var want = p;
    levels(uri, function (L8) {
      if (state.photo !== want) return;
      var maxLevel = 0;
      for (var l = 1; l <= RUN.scale.n_levels; l++) if (levelArea(l) <= budget * (1 + 1e-9)) maxLevel = l;
      var c = document.createElement("canvas");
      c.width = L8.w; c.height = L8.h;
      var g = c.getContext("2d"), im = g.createImageData(L8.w, L8.h), n = 0;
      for (var i = 0; i < L8.lv.length; i++) {
        var v = L8.lv[i];
        if (v > 0 && v <= maxLevel) {
          // most likely (smallest level) dark red, the last rank groups within the budget light orange
          var t = maxLevel > 1 ? (v - 1) / (maxLevel - 1) : 0;
          im.data[4 * i] = Math.round(190 + 65 * t); im.data[4 * i + 1] = Math.round(150 * t);
          im.data[4 * i + 2] = 0; im.data[4 * i + 3] = 255; n++;
        }
      }
      g.putImageData(im, 0, 0);
      state.regionPixels = n;
      regionLayer = L.imageOverlay(c.toDataURL(), [[-90, -180], [90, 180]], { opacity: 0.85, pane: "region" })
        .addTo(map);
      $("region-info").textContent = state.method + ": " + n + " map pixel(s) within " + fmt(budget, 3) + " km²";
    });
  }
  function onBudget() {
    var hiLog = Math.log10(RUN.scale ? RUN.scale.hi_km2 : 5.1e8);
    state.budgetLog = hiLog * Number($("budget").value) / 1000;
    $("coverage").value = "";
    drawRegion();
  }

  // ------------------------------------------------------------------------------------------ curves
  function buildCurves() {
    var cv = RUN.curves[state.testset];
    var box = $("curve-toggles");
    box.innerHTML = "";
    $("cap-table").innerHTML = "";
    if (!cv) { drawCurves(); return; }
    Object.keys(cv.recall).forEach(function (k, i) {
      if (state.curvesOn[k] === undefined) state.curvesOn[k] = /\+LS\+LC$|^[^|]*\|[^+(]*$/.test(k);
      var lab = document.createElement("label");
      var cb = document.createElement("input");
      cb.type = "checkbox"; cb.checked = state.curvesOn[k]; cb.dataset.key = k;
      cb.onchange = function () { state.curvesOn[k] = cb.checked; drawCurves(); };
      var sw = document.createElement("span");
      sw.className = "swatch"; sw.style.background = CURVE_COLOURS[i % CURVE_COLOURS.length];
      lab.appendChild(cb); lab.appendChild(sw); lab.appendChild(document.createTextNode(k.replace("|", ": ")));
      box.appendChild(lab);
    });
    var head = "<tr><th>recall (%) at</th>" + cv.cap_names.map(function (n) { return "<th>" + n + "</th>"; })
      .join("") + "</tr>";
    var rows = Object.keys(cv.caps).map(function (k) {
      return "<tr data-key=\"" + k + "\"><td>" + k.split("|")[1] + "</td>" + cv.caps[k].map(function (v) {
        return "<td>" + (v === null ? "n/a" : (100 * v).toFixed(1)) + "</td>";
      }).join("") + "</tr>";
    });
    $("cap-table").innerHTML = head + rows.join("");
    drawCurves();
  }
  function drawCurves() {
    var c = $("curves"), g = c.getContext("2d"), W = c.width, H = c.height, m = 30;
    g.clearRect(0, 0, W, H);
    var cv = RUN.curves[state.testset];
    if (!cv) { g.fillText("no curves (no truth)", 40, 40); return; }
    var lx0 = 0, lx1 = Math.log10(cv.alphas[cv.alphas.length - 1]);
    function X(a) { return m + (W - m - 8) * (Math.log10(a) - lx0) / (lx1 - lx0); }
    function Y(r) { return H - m + (-(H - m - 8)) * r; }
    g.strokeStyle = "#999"; g.strokeRect(m, 8, W - m - 8, H - m - 8);
    g.fillStyle = "#555"; g.font = "10px sans-serif";
    cv.cap_areas.forEach(function (a, i) {
      g.strokeStyle = "#ddd"; g.beginPath(); g.moveTo(X(a), 8); g.lineTo(X(a), H - m); g.stroke();
      g.fillText(cv.cap_names[i], X(a) - 10, H - m + 12);
    });
    g.fillText("area budget (km², log)", W / 2 - 40, H - 4);
    g.fillText("1", 4, Y(1) + 4); g.fillText("0", 4, Y(0));
    Object.keys(cv.recall).forEach(function (k, i) {
      if (!state.curvesOn[k]) return;
      g.strokeStyle = CURVE_COLOURS[i % CURVE_COLOURS.length]; g.lineWidth = 1.5; g.beginPath();
      cv.alphas.forEach(function (a, j) {
        var r = cv.recall[k][j];
        if (j === 0) g.moveTo(X(a), Y(r)); else g.lineTo(X(a), Y(r));
      });
      g.stroke();
    });
  }

  // -------------------------------------------------------------------------------------------- init
  function drawRamp() {
    var g = $("ramp").getContext("2d");
    for (var x = 0; x < 240; x++) { g.fillStyle = rampColour(x / 239); g.fillRect(x, 0, 1, 12); }
  }
  function init() {
    map = L.map("map", { crs: L.CRS.EPSG4326, minZoom: 0, maxZoom: 9, zoomSnap: 0.25,
      maxBounds: [[-100, -200], [100, 200]], attributionControl: false });
    map.createPane("region").style.zIndex = 450; // above the photos' points (overlay pane: 400)
    map.createPane("truth").style.zIndex = 460;
    var bm = RUN.basemap;
    L.imageOverlay(bm.image, bm.bounds, { opacity: 0.7 }).addTo(map);
    if (bm.outline) L.geoJSON(bm.outline, { style: { color: "#556", weight: 0.8, fill: false },
      interactive: false }).addTo(map);
    map.fitBounds([[-80, -180], [85, 180]]);
    RUN.buckets.forEach(function (b, i) {
      var lab = document.createElement("label"), cb = document.createElement("input");
      cb.type = "checkbox"; cb.checked = true; cb.dataset.bucket = i;
      cb.onchange = function () { state.buckets[i] = cb.checked; applyFilter(); };
      lab.appendChild(cb); lab.appendChild(document.createTextNode(b));
      $("buckets").appendChild(lab);
    });
    drawRamp();
    fillSelect($("testset"), RUN.testsets.map(function (t) { return t.name; }));
    $("testset").onchange = function () { setTestset(this.value); };
    $("base").onchange = function () { setBase(this.value); };
    $("method").onchange = function () { setMethod(this.value); };
    $("budget").oninput = onBudget;
    $("coverage").onchange = onCoverage;
    setTestset(RUN.testsets[0].name);
    window.GEOENS_APP.ready = true;
  }

  // what the browser tests read back
  window.GEOENS_APP = {
    ready: false,
    state: state,
    colourOf: function (i) { return markers[i].options.fillColor; },
    shownCount: function () { return pointLayer ? pointLayer.getLayers().length : 0; },
    setMethod: setMethod, setBase: setBase, setTestset: setTestset, openPhoto: openPhoto,
    markerPoint: function (i) { var p = map.latLngToContainerPoint(markers[i].getLatLng()); return [p.x, p.y]; },
    map: function () { return map; },
  };
  init();
})();
