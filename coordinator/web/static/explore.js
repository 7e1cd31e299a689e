// The explorer: a Leaflet map (simple CRS) whose tiles the coordinator renders on its queue.
//
// Tile (z, x, y) is the square tile_size pixels wide whose top-left corner is at
// map point (x, y) * tile_size at zoom z; at zoom 0 tile (0, 0) is the fractal's
// default view (coordinator/web/tiles.py has the same mapping). All the tiles
// Leaflet creates in one update go to the coordinator as one request, answered
// as a stream of frames as they are ready: (position, status, length) as three
// big-endian 32-bit numbers, then a PNG (status 0) or a one-line error.

import { signIn } from "./session.js";

const FRAME = 12;
// batches: when each tile request was sent, answered, fully read and its tiles
// decoded (performance.now() times, the last 50), for the benchmark's split.
const state = { config: null, map: null, layer: null, params: null, lastLoad: null, batches: [] };

async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin" });
  if (!response.ok) throw new Error((await response.text()).trim() || response.statusText);
  return response.json();
}

function setStatus(text) {
  document.getElementById("status").textContent = text;
}

// ---- coordinates ----------------------------------------------------------------

function fractalView() {
  return state.config.fractals[state.params.fractal];
}

// The complex point at a map position (Leaflet's simple CRS: lng rightwards, lat upwards).
function toComplex(latlng) {
  const view = fractalView();
  const unit = view.view_width / state.config.tile_size;
  return {
    x: view.center_x - view.view_width / 2 + latlng.lng * unit,
    y: view.center_y + view.view_width / 2 + latlng.lat * unit,
  };
}

// The map position of a complex point: toComplex's inverse.
function toLatLng(x, y) {
  const view = fractalView();
  const unit = view.view_width / state.config.tile_size;
  return L.latLng(
    (y - view.center_y - view.view_width / 2) / unit,
    (x - view.center_x + view.view_width / 2) / unit,
  );
}

// The view in the address (#fractal=...&z=...&x=...&y=...), so it can be shared.
function hashView() {
  return new URLSearchParams(window.location.hash.slice(1));
}

function keepView() {
  const center = toComplex(state.map.getCenter());
  const view = new URLSearchParams(state.params);
  view.set("z", String(state.map.getZoom()));
  view.set("x", String(center.x));
  view.set("y", String(center.y));
  window.history.replaceState(null, "", `#${view}`);
}

function visibleView() {
  const map = state.map;
  const center = toComplex(map.getCenter());
  const size = map.getSize();
  const unit = fractalView().view_width / state.config.tile_size;
  return { center, width: (size.x / 2 ** map.getZoom()) * unit, size };
}

// ---- tiles ------------------------------------------------------------------------

// A growable byte buffer that frames are cut from as the response streams in.
class Frames {
  constructor() {
    this.bytes = new Uint8Array(1 << 16);
    this.start = 0;
    this.end = 0;
  }
  push(chunk) {
    if (this.end + chunk.length > this.bytes.length) {
      const kept = this.end - this.start;
      const size = Math.max(this.bytes.length, 2 * (kept + chunk.length));
      const bytes = size > this.bytes.length ? new Uint8Array(size) : this.bytes;
      bytes.set(this.bytes.subarray(this.start, this.end), 0);
      this.bytes = bytes;
      this.start = 0;
      this.end = kept;
    }
    this.bytes.set(chunk, this.end);
    this.end += chunk.length;
  }
  next() {
    if (this.end - this.start < FRAME) return null;
    const view = new DataView(this.bytes.buffer, this.start, FRAME);
    const index = view.getUint32(0);
    const status = view.getUint32(4);
    const length = view.getUint32(8);
    if (this.end - this.start < FRAME + length) return null;
    const body = this.bytes.slice(this.start + FRAME, this.start + FRAME + length);
    this.start += FRAME + length;
    return { index, status, body };
  }
}

const BatchTiles = L.GridLayer.extend({
  initialize(params, options) {
    L.GridLayer.prototype.initialize.call(this, options);
    this.params = params;
    this.queue = [];
    this.inFlight = new Set(); // { batch, controller } of the requests not fully read
    // Zooming on removes the tiles of the level passed: a request none of whose
    // tiles are still on the map is aborted, and the coordinator drops its job.
    this.on("tileunload", () => {
      for (const request of this.inFlight) {
        if (!request.batch.some((entry) => this.alive(entry))) request.controller.abort();
      }
    });
  },

  createTile(coords, done) {
    // A canvas: PNGs are decoded off the main thread (createImageBitmap) and the
    // bitmap handed to it; about 50 ms less browser CPU a zoom step than drawing
    // into 2D canvases or showing <img> elements.
    const img = document.createElement("canvas");
    img.width = img.height = state.config.tile_size;
    this.queue.push({ coords, img, done });
    if (this.queue.length === 1) queueMicrotask(() => this.flush());
    return img;
  },

  alive(entry) {
    const tile = this._tiles[this._tileCoordsToKey(entry.coords)];
    return tile !== undefined && tile.el === entry.img;
  },

  flush() {
    const batch = this.queue;
    this.queue = [];
    const most = state.config.max_tiles;
    for (let first = 0; first < batch.length; first += most) {
      this.fetchTiles(batch.slice(first, first + most));
    }
  },

  async fetchTiles(batch) {
    batch = batch.filter((entry) => this.alive(entry));
    if (batch.length === 0) return;
    // The list goes unescaped (digits, "-", "/" and ","): the URL stays short.
    const tiles = batch.map(({ coords: c }) => `${c.z}/${c.x}/${c.y}`).join(",");
    const query = `${new URLSearchParams(this.params)}&tiles=${tiles}`;
    const times = { sent: performance.now(), tiles: batch.length, decoded: 0 };
    state.batches.push(times);
    if (state.batches.length > 50) state.batches.shift();
    const request = { batch, controller: new AbortController() };
    this.inFlight.add(request);
    try {
      await this.readTiles(batch, query, request.controller.signal, times);
    } finally {
      this.inFlight.delete(request);
    }
  },

  async readTiles(batch, query, signal, times) {
    let response;
    try {
      response = await fetch(`/api/explore/tiles?${query}`, { credentials: "same-origin", signal });
      times.headers = performance.now();
    } catch (error) {
      this.failAll(batch, `the coordinator did not answer: ${error.message}`);
      return;
    }
    if (response.status === 503) {
      // The explorer's queue is full for now: ask again in a moment.
      const wait = 1000 * (Number(response.headers.get("Retry-After")) || 1);
      setStatus((await response.text()).trim());
      setTimeout(() => this.fetchTiles(batch), wait);
      return;
    }
    if (!response.ok) {
      this.failAll(batch, (await response.text()).trim() || response.statusText);
      return;
    }
    const frames = new Frames();
    const reader = response.body.getReader();
    const answered = new Set();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        frames.push(value);
        for (let frame = frames.next(); frame !== null; frame = frames.next()) {
          answered.add(frame.index);
          this.show(batch[frame.index], frame, times);
        }
      }
    } catch (error) {
      // The connection broke: the tiles not answered yet fail below.
    }
    times.read = performance.now();
    this.failAll(
      batch.filter((_, index) => !answered.has(index)),
      "the coordinator did not send this tile",
    );
  },

  show(entry, frame, times) {
    if (entry === undefined) return;
    if (frame.status !== 0) {
      entry.done(new Error(new TextDecoder().decode(frame.body)), entry.img);
      return;
    }
    createImageBitmap(new Blob([frame.body], { type: "image/png" }))
      .then((bitmap) => {
        // Handed over, not copied: the canvas shows the decoded bitmap itself.
        entry.img.getContext("bitmaprenderer").transferFromImageBitmap(bitmap);
        times.decoded = performance.now();
        entry.done(null, entry.img);
      })
      .catch(() => entry.done(new Error("the tile is not a PNG the browser can show"), entry.img));
  },

  failAll(batch, message) {
    // Tiles already off the map (an aborted request's) fail silently.
    for (const entry of batch) if (this.alive(entry)) entry.done(new Error(message), entry.img);
  },
});

function tileBounds() {
  // The default view and as much again on each side (tile_range in tiles.py).
  const size = state.config.tile_size;
  return L.latLngBounds([-2 * size, -size], [size, 2 * size]);
}

function showLayer() {
  if (state.layer) state.map.removeLayer(state.layer);
  const layer = new BatchTiles(state.params, {
    tileSize: state.config.tile_size,
    minZoom: 0,
    maxZoom: state.config.max_zoom,
    bounds: tileBounds(),
    keepBuffer: 2,
  });
  let started = performance.now();
  layer.on("loading", () => {
    started = performance.now();
  });
  layer.on("load", () => {
    state.lastLoad = performance.now() - started;
    const { center, width } = visibleView();
    setStatus(
      `zoom ${state.map.getZoom()} · centre ${center.x.toPrecision(12)} ${center.y >= 0 ? "+" : "−"} ` +
        `${Math.abs(center.y).toPrecision(12)}i · width ${width.toPrecision(4)} · ` +
        `${Math.round(state.lastLoad)} ms`,
    );
  });
  layer.on("tileerror", (event) => setStatus(`a tile failed: ${event.error.message}`));
  layer.addTo(state.map);
  state.layer = layer;
}

// ---- controls -------------------------------------------------------------------

function readControls() {
  const form = document.getElementById("controls");
  const params = {
    fractal: form.fractal.value,
    max_iter: String(parseInt(form.max_iter.value, 10) || state.config.default_max_iter),
    palette: form.palette.value,
    colour_scale: form.colour_scale.value,
  };
  if (params.fractal === "julia") {
    params.c_re = form.c_re.value.trim();
    params.c_im = form.c_im.value.trim();
  }
  return params;
}

function fitDefaultView() {
  const size = state.config.tile_size;
  state.map.fitBounds([[-size, 0], [0, size]]);
}

function setupControls() {
  const form = document.getElementById("controls");
  for (const name of state.config.palettes) form.palette.add(new Option(name, name));
  form.palette.value = state.config.default_palette;
  for (const name of state.config.colour_scales) form.colour_scale.add(new Option(name, name));
  form.colour_scale.value = state.config.default_colour_scale;
  form.max_iter.max = state.config.max_iter;
  form.max_iter.value = 500;
  [form.c_re.value, form.c_im.value] = state.config.julia_c.map(String);
  const juliaOnly = () => {
    form.querySelector(".julia").hidden = form.fractal.value !== "julia";
  };
  const shared = hashView();
  const offered = { palette: state.config.palettes, colour_scale: state.config.colour_scales };
  for (const name of ["fractal", "max_iter", "palette", "colour_scale", "c_re", "c_im"]) {
    const value = shared.get(name);
    // An option the page does not offer is ignored; numbers are the coordinator's to check.
    if (value !== null && (name !== "fractal" || value in state.config.fractals)) {
      if (!(name in offered) || offered[name].includes(value)) form[name].value = value;
    }
  }
  form.fractal.addEventListener("change", juliaOnly);
  juliaOnly();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const fractal = state.params.fractal;
    state.params = readControls();
    if (fractal !== state.params.fractal) fitDefaultView();
    showLayer();
    keepView();
  });
  form.hidden = false;
  state.params = readControls();
}

// ---- render this view -------------------------------------------------------------

function openRender() {
  const panel = document.getElementById("render");
  const form = document.getElementById("render-form");
  const { center, width, size } = visibleView();
  form.width.value = size.x;
  form.height.value = size.y;
  if (!form.regions.value) form.regions.value = 8;
  if (!form.priority.value) form.priority.value = 10;
  panel.dataset.centerX = String(center.x);
  panel.dataset.centerY = String(center.y);
  panel.dataset.viewWidth = String(width);
  document.getElementById("render-view").textContent =
    `${state.params.fractal}, centre (${center.x}, ${center.y}), view width ${width}, ` +
    `max-iter ${state.params.max_iter}, palette ${state.params.palette}`;
  document.getElementById("render-error").textContent = "";
  document.getElementById("render-done").textContent = "";
  panel.hidden = false;
}

async function submitRender(event) {
  event.preventDefault();
  const panel = document.getElementById("render");
  const form = event.target;
  const body = {
    fractal: state.params.fractal,
    width: form.width.value,
    height: form.height.value,
    regions: form.regions.value,
    priority: form.priority.value,
    "max-iter": state.params.max_iter,
    palette: state.params.palette,
    "colour-scale": state.params.colour_scale,
    "center-x": panel.dataset.centerX,
    "center-y": panel.dataset.centerY,
    // The same horizontal extent at whatever width the image has.
    "view-width": panel.dataset.viewWidth,
  };
  if (state.params.fractal === "julia") {
    body["c-re"] = state.params.c_re;
    body["c-im"] = state.params.c_im;
  }
  const response = await fetch("/api/render", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const answer = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) {
    document.getElementById("render-error").textContent =
      (answer.field ? `${answer.field}: ` : "") + (answer.error || response.statusText);
    return;
  }
  const done = document.getElementById("render-done");
  done.textContent = `job ${answer.job_id} submitted: `;
  const link = document.createElement("a");
  link.href = "/";
  link.textContent = "follow it on the dashboard";
  done.append(link);
}

// ---- start ------------------------------------------------------------------------

async function start() {
  state.config = await getJSON("/api/explore/config");
  setupControls();
  state.map = L.map("map", {
    crs: L.CRS.Simple,
    minZoom: 0,
    maxZoom: state.config.max_zoom,
    maxBounds: tileBounds(),
    maxBoundsViscosity: 0.8,
    attributionControl: false,
    // A zoom step shows the level before, scaled, at once and each new tile as
    // soon as it is decoded: no animation competes with the tiles for the CPU
    // (a zoom step's tiles loaded about a third sooner without them).
    zoomAnimation: false,
    fadeAnimation: false,
  });
  const shared = hashView();
  const [zoom, x, y] = ["z", "x", "y"].map((name) => Number.parseFloat(shared.get(name)));
  if ([zoom, x, y].every(Number.isFinite)) {
    state.map.setView(toLatLng(x, y), Math.round(zoom));
  } else {
    fitDefaultView();
  }
  showLayer();
  state.map.on("moveend", keepView);
  state.map.on("click", openRender);
  document.getElementById("render-open").addEventListener("click", openRender);
  document.getElementById("render-close").addEventListener("click", () => {
    document.getElementById("render").hidden = true;
  });
  document.getElementById("render-form").addEventListener("submit", submitRender);
  window.fractalqExplorer = state; // for tests and the benchmark
}

signIn(document.getElementById("map"))
  .then(start)
  .catch((error) => setStatus(error.message));
