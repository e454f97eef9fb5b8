// DGAE playground: one page that calls this server's own /v1/model, /encode and /decode (large
// decodes through /v1/jobs/decode, with a progress bar).
// Plain ES module, no framework, no build step, no third-party code; works offline.
//
// PSNR (shown on the page and recomputed the same way by tests/test_playground_browser.py):
//   both images at the original's size, 8-bit RGB, the original drawn on white (the server
//   composites alpha on white too), MSE over every R, G and B value, PSNR = 10 log10(255² / MSE).

const PIXEL_MAX = 255;
const RGBA = 4;
const RGB = 3;
const LEVELS = 256;
const VARIABILITY_SEEDS = 4;
const HEAT_PERCENTILE = 0.99; // heatmaps scale to this percentile, so one outlier cannot flatten them
const SEED_LIMIT = 2 ** 31; // random seeds are drawn in [0, SEED_LIMIT)
const PSNR_DECIMALS = 2;
const RATIO_DECIMALS = 1;
const BYTES_PER_VALUE = { F32: 4, F16: 2 };
const LATENT_TYPES = { json: "application/json", npy: "application/x-npy", safetensors: "application/x-safetensors" };
const NPY_MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY
// .npy: magic, major, minor, then the header length (uint16 in v1, uint32 in v2+), then the header
const NPY_LEN_AT = NPY_MAGIC.length + 2;
const NPY_V1 = 1;
const NPY_V1_LEN_BYTES = 2;
const NPY_V2_LEN_BYTES = 4;
const SAFETENSORS_HEADER_BYTES = 8;
const F16 = { EXP_BITS: 0x1f, EXP_SHIFT: 10, FRAC_MASK: 0x3ff, BIAS: 15, FRAC_SCALE: 1024, SUBNORMAL: 2 ** -14 };
// inferno colour map anchors (matplotlib), interpolated to 256 entries
const INFERNO = [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
  [250, 193, 39], [252, 255, 164]];
// Large decodes go through the jobs route (POST /v1/jobs/decode, polled) and show a progress bar:
// images of JOB_MIN_PIXELS or more, and those the server's cost model (/v1/model "cost") estimates
// at JOB_MIN_SECONDS or more.
const JOB_MIN_SECONDS = 10;
const JOB_MIN_PIXELS = 512 * 512;
const JOB_POLL_MS = 500;
const MS_PER_S = 1000;
const PIXELS_PER_MEGAPIXEL = 1e6;
const BITMAP_OPTIONS = { colorSpaceConversion: "none", premultiplyAlpha: "none", imageOrientation: "from-image" };

const $ = (id) => document.getElementById(id);

const state = {
  key: null, // API key, in memory only
  model: null, // /v1/model
  tile: { "/encode": [], "/decode": [] }, // tiling values each route accepts (from /openapi.json)
  original: null, // {name, blob, image: ImageData | null}
  latents: null, // {bytes, type, name, parsed}
  recon: null, // {blob, image, seed, steps}
  urls: {},
  runs: 0,
};

class ServiceError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

class PageError extends Error {}

// ---- HTTP -----------------------------------------------------------------------------------
async function api(path, init = {}) {
  const headers = new Headers(init.headers || {});
  if (state.key) headers.set("Authorization", `Bearer ${state.key}`);
  let res;
  try {
    res = await fetch(path, { ...init, headers, cache: "no-store", credentials: "omit" });
  } catch (err) {
    throw new ServiceError(0, "network_error", `could not reach the service (${err.message})`);
  }
  if (!res.ok) throw await errorFrom(res);
  return res;
}

async function errorFrom(res) {
  let code = `http_${res.status}`;
  let message = res.statusText || "request failed";
  try {
    const body = await res.json();
    if (body && body.error && typeof body.error.message === "string") {
      code = String(body.error.code);
      message = body.error.message;
    }
  } catch {
    // not the service's JSON error (a proxy?): keep the status line
  }
  if (res.status === 401) showAuth();
  return new ServiceError(res.status, code, message);
}

function serverMs(res, op) {
  // Server-Timing: decode;dur=123.4;desc="queue + model"
  const header = res.headers.get("Server-Timing") || "";
  for (const entry of header.split(",")) {
    const [name, ...params] = entry.trim().split(";");
    if (name !== op) continue;
    for (const p of params) {
      const [k, v] = p.trim().split("=");
      if (k === "dur") return Number(v);
    }
  }
  return null;
}

// ---- capabilities ------------------------------------------------------------------------------
async function loadModel() {
  const res = await api("/v1/model");
  state.model = await res.json();
  const m = state.model;
  $("model-line").textContent = `${m.preset} · f=${m.downsample_factor}, c=${m.latent_channels} · ` +
    `${m.backend} on ${m.device} (${m.precision})`;
  const steps = $("steps");
  steps.min = String(m.steps.min);
  steps.max = String(m.steps.max);
  if (!steps.value) steps.value = String(m.steps.default);
  $("steps-hint").textContent = `${m.steps.min}…${m.steps.max}, model default ${m.steps.default}`;
}

function enumOf(schema) {
  if (!schema) return [];
  if (Array.isArray(schema.enum)) return schema.enum;
  return (schema.anyOf || schema.oneOf || []).flatMap((s) => (Array.isArray(s.enum) ? s.enum : []));
}

async function loadTiling() {
  // The OpenAPI description lists each route's real parameters: offer tiling only where it exists.
  let spec = null;
  try {
    const res = await fetch("/openapi.json", { cache: "no-store", credentials: "omit" });
    if (res.ok) spec = await res.json();
  } catch {
    spec = null;
  }
  const values = new Set();
  for (const path of Object.keys(state.tile)) {
    const params = (spec && spec.paths && spec.paths[path] && spec.paths[path].post &&
      spec.paths[path].post.parameters) || [];
    const tile = params.find((p) => p.name === "tile" && p.in === "query");
    state.tile[path] = tile ? enumOf(tile.schema).map(String) : [];
    state.tile[path].forEach((v) => values.add(v));
  }
  const select = $("tile");
  if (values.size === 0) {
    $("tile-hint").textContent = "this server has no tile parameter; images are decoded whole";
    return;
  }
  select.replaceChildren(...[...values].map((v) => new Option(v, v)));
  select.disabled = false;
  const routes = Object.keys(state.tile).filter((p) => state.tile[p].length).join(" and ");
  $("tile-hint").textContent = `sent to ${routes}`;
}

function addTile(query, path) {
  const value = $("tile").value;
  if (value && state.tile[path].includes(value)) query.set("tile", value);
}

// ---- images -------------------------------------------------------------------------------------
async function toImageData(blob, canvas) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, BITMAP_OPTIONS);
  } catch {
    return null; // the browser cannot show this file; the service may still read it
  }
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.fillStyle = "#ffffff";
  ctx.fillRect(0, 0, bitmap.width, bitmap.height);
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  return ctx.getImageData(0, 0, canvas.width, canvas.height);
}

function sameSize(a, b) {
  return a && b && a.width === b.width && a.height === b.height;
}

function psnr(a, b) {
  let sum = 0;
  for (let i = 0; i < a.data.length; i += RGBA) {
    for (let c = 0; c < RGB; c++) {
      const d = a.data[i + c] - b.data[i + c];
      sum += d * d;
    }
  }
  const mse = sum / (a.width * a.height * RGB);
  return mse === 0 ? Infinity : 10 * Math.log10((PIXEL_MAX * PIXEL_MAX) / mse);
}

const LUT = (() => {
  const lut = new Uint8ClampedArray(LEVELS * RGB);
  const segments = INFERNO.length - 1;
  for (let i = 0; i < LEVELS; i++) {
    const x = (i / (LEVELS - 1)) * segments;
    const k = Math.min(Math.floor(x), segments - 1);
    const t = x - k;
    for (let c = 0; c < RGB; c++) lut[i * RGB + c] = INFERNO[k][c] + t * (INFERNO[k + 1][c] - INFERNO[k][c]);
  }
  return lut;
})();

function percentile(values, q) {
  const sorted = Float32Array.from(values).sort();
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : 0;
}

// values: one number per pixel (levels); drawn with the inferno map from 0 to the HEAT_PERCENTILE value
function drawHeat(canvas, width, height, values, scaleEl, unit) {
  const top = Math.max(percentile(values, HEAT_PERCENTILE), 1);
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  const out = ctx.createImageData(width, height);
  for (let p = 0; p < values.length; p++) {
    const level = Math.min(LEVELS - 1, Math.round((values[p] / top) * (LEVELS - 1)));
    out.data[p * RGBA] = LUT[level * RGB];
    out.data[p * RGBA + 1] = LUT[level * RGB + 1];
    out.data[p * RGBA + 2] = LUT[level * RGB + 2];
    out.data[p * RGBA + 3] = PIXEL_MAX;
  }
  ctx.putImageData(out, 0, 0);
  scaleEl.textContent = `(black 0 → yellow ≥ ${top.toFixed(1)} ${unit})`;
}

function absDiff(a, b) {
  const n = a.width * a.height;
  const out = new Float32Array(n);
  for (let p = 0; p < n; p++) {
    let s = 0;
    for (let c = 0; c < RGB; c++) s += Math.abs(a.data[p * RGBA + c] - b.data[p * RGBA + c]);
    out[p] = s / RGB;
  }
  return out;
}

function spread(images) {
  // per pixel: standard deviation across images, per channel, averaged over R, G, B
  const n = images[0].width * images[0].height;
  const out = new Float32Array(n);
  for (let p = 0; p < n; p++) {
    let total = 0;
    for (let c = 0; c < RGB; c++) {
      let mean = 0;
      for (const im of images) mean += im.data[p * RGBA + c];
      mean /= images.length;
      let v = 0;
      for (const im of images) v += (im.data[p * RGBA + c] - mean) ** 2;
      total += Math.sqrt(v / images.length);
    }
    out[p] = total / RGB;
  }
  return out;
}

// ---- latents files ----------------------------------------------------------------------------------
function halfToFloat(h) {
  const sign = h >> 15 ? -1 : 1;
  const exp = (h >> F16.EXP_SHIFT) & F16.EXP_BITS;
  const frac = h & F16.FRAC_MASK;
  if (exp === 0) return sign * F16.SUBNORMAL * (frac / F16.FRAC_SCALE);
  if (exp === F16.EXP_BITS) return frac ? NaN : sign * Infinity;
  return sign * 2 ** (exp - F16.BIAS) * (1 + frac / F16.FRAC_SCALE);
}

function typedValues(bytes, dtype) {
  const copy = bytes.slice(); // aligned copy
  if (dtype === "F32") return new Float32Array(copy.buffer);
  if (dtype === "F16") return Float32Array.from(new Uint16Array(copy.buffer), halfToFloat);
  return null;
}

function parseSafetensors(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = Number(view.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(SAFETENSORS_HEADER_BYTES,
    SAFETENSORS_HEADER_BYTES + n)));
  const names = Object.keys(header).filter((k) => k !== "__metadata__");
  const t = header.latents || header[names[0]];
  const start = SAFETENSORS_HEADER_BYTES + n;
  let meta = null;
  try {
    meta = JSON.parse((header.__metadata__ || {}).dgae);
  } catch {
    meta = null;
  }
  const values = typedValues(bytes.subarray(start + t.data_offsets[0], start + t.data_offsets[1]), t.dtype);
  return { shape: t.shape, dtype: t.dtype, values, meta };
}

function parseNpy(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const major = bytes[NPY_MAGIC.length];
  const [len, at] = major === NPY_V1 ? [view.getUint16(NPY_LEN_AT, true), NPY_LEN_AT + NPY_V1_LEN_BYTES] :
    [view.getUint32(NPY_LEN_AT, true), NPY_LEN_AT + NPY_V2_LEN_BYTES];
  const header = new TextDecoder().decode(bytes.subarray(at, at + len));
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  if (/'fortran_order':\s*True/.test(header)) return null;
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(",").filter((s) => s.trim()).map(Number);
  const dtype = { "<f4": "F32", "<f2": "F16" }[descr];
  return dtype ? { shape, dtype, values: typedValues(bytes.subarray(at + len), dtype), meta: null } : null;
}

function parseJsonLatents(bytes) {
  const doc = JSON.parse(new TextDecoder().decode(bytes));
  const shape = [];
  for (let a = doc.latents; Array.isArray(a); a = a[0]) shape.push(a.length);
  return { shape, dtype: "F32", values: Float32Array.from(doc.latents.flat(Infinity)), meta: doc.metadata || null };
}

function isNpy(bytes) {
  return NPY_MAGIC.every((b, i) => bytes[i] === b);
}

function latentsType(name, bytes) {
  if (/\.json$/i.test(name) || bytes[0] === "{".charCodeAt(0)) return LATENT_TYPES.json;
  return isNpy(bytes) ? LATENT_TYPES.npy : LATENT_TYPES.safetensors;
}

function parseLatents(bytes, type) {
  // for the preview only: the service validates the file and reports what is wrong with it
  try {
    if (type === LATENT_TYPES.json) return parseJsonLatents(bytes);
    return type === LATENT_TYPES.npy ? parseNpy(bytes) : parseSafetensors(bytes);
  } catch {
    return null;
  }
}

function drawChannels(parsed) {
  const box = $("channels");
  box.replaceChildren();
  if (!parsed || !parsed.values || parsed.shape.length < 3) {
    box.textContent = "no preview for these latents";
    return;
  }
  const [c, h, w] = parsed.shape.slice(-3);
  for (let ch = 0; ch < c; ch++) {
    const plane = parsed.values.subarray(ch * h * w, (ch + 1) * h * w); // first item of a batch
    let lo = Infinity;
    let hi = -Infinity;
    for (const v of plane) {
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
    const canvas = document.createElement("canvas");
    canvas.width = w;
    canvas.height = h;
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", `latent channel ${ch}`);
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(w, h);
    const range = hi - lo || 1;
    plane.forEach((v, p) => {
      const g = Math.round(((v - lo) / range) * PIXEL_MAX);
      img.data.set([g, g, g, PIXEL_MAX], p * RGBA);
    });
    ctx.putImageData(img, 0, 0);
    const fig = document.createElement("figure");
    const cap = document.createElement("figcaption");
    cap.textContent = `channel ${ch}: ${lo.toFixed(2)} … ${hi.toFixed(2)}`;
    fig.append(canvas, cap);
    box.append(fig);
  }
}

// ---- page state ----------------------------------------------------------------------------------------
function setBusy(message) {
  document.body.dataset.state = "busy";
  $("status").textContent = message;
  $("error").hidden = true;
  for (const id of ["run", "again", "vary"]) $(id).disabled = true;
}

function setDone(message) {
  state.runs += 1;
  document.body.dataset.runs = String(state.runs);
  document.body.dataset.state = "done";
  $("status").textContent = message;
  enableButtons();
}

function enableButtons() {
  $("run").disabled = !(state.model && state.original);
  $("again").disabled = !(state.model && state.latents);
  $("vary").disabled = !(state.model && state.latents);
}

function showError(err) {
  state.runs += 1;
  document.body.dataset.runs = String(state.runs);
  document.body.dataset.state = "error";
  const box = $("error");
  box.replaceChildren();
  const head = document.createElement("strong");
  const msg = document.createElement("span");
  msg.id = "error-message";
  if (err instanceof ServiceError) {
    head.textContent = err.status ? `The service answered ${err.status} (${err.code}): ` : "Network error: ";
  } else if (err instanceof PageError) {
    head.textContent = "";
  } else {
    head.textContent = "Unexpected error in the page: ";
  }
  msg.textContent = err.message;
  box.append(head, msg);
  box.hidden = false;
  $("status").textContent = "Failed; see the message below.";
  enableButtons();
}

function guard(fn) {
  return async (...args) => {
    try {
      await fn(...args);
    } catch (err) {
      showError(err);
    }
  };
}

function showAuth() {
  $("auth").hidden = false;
  $("api-key").focus();
}

function setDownload(id, blob, filename) {
  const a = $(id);
  if (state.urls[id]) URL.revokeObjectURL(state.urls[id]);
  state.urls[id] = URL.createObjectURL(blob);
  a.href = state.urls[id];
  a.download = filename;
  a.removeAttribute("aria-disabled");
}

function clearDownload(id) {
  const a = $(id);
  if (state.urls[id]) URL.revokeObjectURL(state.urls[id]);
  delete state.urls[id];
  a.removeAttribute("href");
  a.setAttribute("aria-disabled", "true");
}

function stem(name) {
  return (name.replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9_.-]/g, "_") || "image").slice(0, 64);
}

function clearCanvas(id) {
  const c = $(id);
  c.width = 0;
  c.height = 0;
}

function clearResults() {
  $("job").hidden = true;
  delete document.body.dataset.jobState;
  for (const id of ["reconstruction", "heatmap"]) clearCanvas(id);
  for (const id of ["psnr", "latent-size", "ratio", "decode-ms", "seed-used"]) $(id).textContent = "–";
  $("heat-scale").textContent = "";
  $("variability-figure").hidden = true;
  $("channels").replaceChildren();
  clearDownload("dl-recon");
  clearDownload("dl-latents");
  state.recon = null;
  state.latents = null;
}

// ---- operations ----------------------------------------------------------------------------------------
function steps() {
  if (!$("settings").reportValidity()) throw new PageError("check the settings: steps must be within the range shown and the seed a whole number ≥ 0");
  return Number($("steps").value);
}

function seedFromField() {
  const v = $("seed").value.trim();
  return v === "" ? null : v;
}

function randomSeed() {
  return crypto.getRandomValues(new Uint32Array(1))[0] % SEED_LIMIT;
}

async function encode() {
  const { blob, name } = state.original;
  const form = new FormData();
  form.append("image", blob, name);
  const q = new URLSearchParams({ fit: "pad" });
  addTile(q, "/encode");
  const res = await api(`/encode?${q}`, { method: "POST", body: form });
  const bytes = new Uint8Array(await res.arrayBuffer());
  const type = LATENT_TYPES.safetensors;
  return { bytes, type, name: `${stem(name)}.safetensors`, parsed: parseLatents(bytes, type), ms: serverMs(res, "encode") };
}

function decodeSeconds(latents, nSteps) {
  // The cost model's estimate (seconds per megapixel-step x output megapixels x steps), or null.
  const p = latents.parsed;
  const rate = state.model && state.model.cost && state.model.cost.seconds_per.decode.seconds;
  if (!p || !rate) return null;
  const [h, w] = p.shape.slice(-2);
  const f = state.model.downsample_factor;
  return rate * (h * f * w * f / PIXELS_PER_MEGAPIXEL) * nSteps;
}

function useJob(latents, nSteps) {
  const p = latents.parsed;
  if (!p || !state.model) return false;
  const f = state.model.downsample_factor;
  const [h, w] = p.shape.slice(-2);
  const seconds = decodeSeconds(latents, nSteps);
  return h * f * w * f >= JOB_MIN_PIXELS || (seconds !== null && seconds >= JOB_MIN_SECONDS);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function showJob(job) {
  const { done, total } = job.progress;
  $("job").hidden = false;
  $("job-progress").max = Math.max(1, total);
  $("job-progress").value = done;
  const left = job.seconds_left === null || job.state !== "running" ? "" : ` · about ${Math.ceil(job.seconds_left)} s left`;
  $("job-text").textContent = `Decoding as a job (${job.state}): ${done} of ${total} network passes${left}`;
  document.body.dataset.jobState = job.state;
}

async function decodeAsJob(q, latents) {
  // POST /v1/jobs/decode, poll GET /v1/jobs/{id} (the API key travels in a header, which EventSource
  // cannot send), then fetch the result: the same bytes and headers /decode would have answered.
  const res = await api(`/v1/jobs/decode?${q}`, { method: "POST", body: latents.bytes, headers: { "Content-Type": latents.type } });
  let job = await res.json();
  showJob(job);
  while (job.state === "queued" || job.state === "running") {
    await sleep(JOB_POLL_MS);
    job = await (await api(`/v1/jobs/${job.id}`)).json();
    showJob(job);
  }
  if (job.state !== "done") throw new ServiceError(job.error.status, job.error.code, job.error.message);
  const out = await api(`/v1/jobs/${job.id}/result`);
  return { res: out, ms: (job.finished_at - job.created_at) * MS_PER_S };
}

async function decodeOnce(latents, seed, nSteps) {
  const q = new URLSearchParams({ steps: String(nSteps) });
  if (seed !== null) q.set("seed", String(seed));
  addTile(q, "/decode");
  const started = performance.now();
  let res, ms;
  if (useJob(latents, nSteps)) {
    ({ res, ms } = await decodeAsJob(q, latents));
  } else {
    res = await api(`/decode?${q}`, { method: "POST", body: latents.bytes, headers: { "Content-Type": latents.type } });
    ms = serverMs(res, "decode");
  }
  const blob = new Blob([await res.arrayBuffer()], { type: res.headers.get("Content-Type") || "image/png" });
  return { blob, seed: res.headers.get("X-DGAE-Seeds"), steps: res.headers.get("X-DGAE-Steps"),
    ms, roundTripMs: performance.now() - started };
}

function showLatentStats(latents) {
  const p = latents.parsed;
  if (!p) {
    $("latent-size").textContent = "unknown (no preview)";
    return;
  }
  const [c, h, w] = p.shape.slice(-3);
  const values = c * h * w;
  $("latent-size").textContent = `${c}×${h}×${w} = ${values.toLocaleString("en")} values (${p.dtype === "F16" ? "float16" : "float32"})`;
  const o = state.original && state.original.image;
  const size = o ? [o.width, o.height] : p.meta && p.meta.images && p.meta.images[0] ?
    [p.meta.images[0].orig_width, p.meta.images[0].orig_height] : null;
  if (!size) {
    $("ratio").textContent = "–";
    return;
  }
  const raw = size[0] * size[1] * RGB;
  const bytes = values * (BYTES_PER_VALUE[p.dtype] || BYTES_PER_VALUE.F32);
  $("ratio").textContent = `${(raw / values).toFixed(RATIO_DECIMALS)}× fewer numbers, ` +
    `${(raw / bytes).toFixed(RATIO_DECIMALS)}× fewer bytes than the ${size[0]}×${size[1]} 8-bit RGB image`;
}

async function showReconstruction(result) {
  const image = await toImageData(result.blob, $("reconstruction"));
  if (!image) throw new PageError("the browser could not display the service's reconstruction");
  state.recon = { ...result, image };
  $("seed-used").textContent = `seed ${result.seed} · ${result.steps} step${result.steps === "1" ? "" : "s"}`;
  $("decode-ms").textContent = result.ms === null ? "not reported" :
    `${Math.round(result.ms)} ms (queue + model; round trip ${Math.round(result.roundTripMs)} ms)`;
  const base = state.original ? stem(state.original.name) : stem(state.latents.name);
  setDownload("dl-recon", result.blob, `${base}_rec_seed${result.seed}_steps${result.steps}.png`);
  const o = state.original && state.original.image;
  clearCanvas("heatmap");
  $("heat-scale").textContent = "";
  if (sameSize(o, image)) {
    const value = psnr(o, image);
    $("psnr").textContent = Number.isFinite(value) ? `${value.toFixed(PSNR_DECIMALS)} dB` : "∞ dB (identical)";
    $("psnr").dataset.value = String(value);
    drawHeat($("heatmap"), image.width, image.height, absDiff(o, image), $("heat-scale"), "levels");
  } else {
    $("psnr").textContent = o ? "– (sizes differ)" : "– (no original)";
    delete $("psnr").dataset.value;
  }
}

async function roundTrip() {
  const nSteps = steps();
  const seed = seedFromField();
  clearResults();
  setBusy("Encoding…");
  state.latents = await encode();
  showLatentStats(state.latents);
  drawChannels(state.latents.parsed);
  setDownload("dl-latents", new Blob([state.latents.bytes], { type: state.latents.type }), state.latents.name);
  $("status").textContent = "Decoding…";
  await showReconstruction(await decodeOnce(state.latents, seed, nSteps));
  const enc = state.latents.ms === null ? "" : ` (encode ${Math.round(state.latents.ms)} ms on the server)`;
  setDone(`Done${enc}.`);
}

async function useImage(blob, name) {
  clearResults();
  state.original = { blob, name, image: null };
  const image = await toImageData(blob, $("original"));
  state.original.image = image;
  $("image-size").textContent = image ? `${image.width}×${image.height}` : "the browser cannot show this file";
  if (!image) clearCanvas("original");
  if (state.model) {
    await roundTrip();
    return;
  }
  const needsKey = !$("auth").hidden;
  document.body.dataset.state = needsKey ? "auth" : "error";
  $("status").textContent = needsKey ? "Image loaded: enter the API key, then press “Encode and decode”." :
    "Image loaded, but the service is not connected; reload the page to retry.";
  enableButtons();
}

async function decodeAgain() {
  const nSteps = steps();
  setBusy("Decoding with another seed…");
  await showReconstruction(await decodeOnce(state.latents, randomSeed(), nSteps));
  setDone("Decoded again with a new seed.");
}

async function variability() {
  const nSteps = steps();
  setBusy(`Decoding with ${VARIABILITY_SEEDS} seeds…`);
  const fixed = seedFromField();
  // the seed field makes the map reproducible; BigInt: seeds may exceed 2^53
  const base = BigInt(fixed === null ? randomSeed() : fixed);
  const last = base + BigInt(VARIABILITY_SEEDS - 1);
  const results = await Promise.all(Array.from({ length: VARIABILITY_SEEDS },
    (_, i) => decodeOnce(state.latents, base + BigInt(i), nSteps)));
  const scratch = document.createElement("canvas");
  const images = [];
  for (const r of results) {
    const im = await toImageData(r.blob, scratch);
    if (!im) throw new PageError("the browser could not display the service's reconstruction");
    images.push(im);
  }
  const values = spread(images);
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  drawHeat($("variability"), images[0].width, images[0].height, values, $("vary-scale"), "levels");
  $("vary-scale").textContent += `; seeds ${base}…${last}, mean ${mean.toFixed(2)} levels`;
  $("variability-figure").hidden = false;
  setDone(`Variability across ${VARIABILITY_SEEDS} seeds shown.`);
}

async function useLatents(bytes, name) {
  const nSteps = steps();
  clearResults();
  state.original = null;
  clearCanvas("original");
  $("image-size").textContent = "– (decoding uploaded latents)";
  const type = latentsType(name, bytes);
  state.latents = { bytes, type, name, parsed: parseLatents(bytes, type), ms: null };
  showLatentStats(state.latents);
  drawChannels(state.latents.parsed);
  setDownload("dl-latents", new Blob([bytes], { type }), name);
  setBusy("Decoding the uploaded latents…");
  await showReconstruction(await decodeOnce(state.latents, seedFromField(), nSteps));
  setDone("Decoded the uploaded latents.");
}

async function useSample(file) {
  setBusy(`Loading ${file}…`);
  const res = await fetch(`/static/samples/${file}`, { credentials: "omit" });
  if (!res.ok) throw new PageError(`sample ${file} could not be loaded (${res.status})`);
  await useImage(await res.blob(), file);
}

// ---- wiring ------------------------------------------------------------------------------------------------
async function connect() {
  if (!state.key) {
    const res = await api("/playground/config");
    if ((await res.json()).auth_required) {
      showAuth();
      document.body.dataset.state = "auth";
      $("status").textContent = "Enter the API key to use this service.";
      $("model-line").textContent = "This service requires an API key.";
      return;
    }
  }
  try {
    await loadModel();
  } catch (err) {
    if (err instanceof ServiceError && err.status === 401) state.key = null; // refused: ask again
    throw err;
  }
  $("auth").hidden = true;
  document.body.dataset.state = "ready";
  $("status").textContent = state.original ? "Ready." : "Choose an image or a sample photo.";
  enableButtons();
}

function wire() {
  $("file").addEventListener("change", guard(async (e) => {
    const f = e.target.files[0];
    if (f) await useImage(f, f.name);
  }));
  $("latents-file").addEventListener("change", guard(async (e) => {
    const f = e.target.files[0];
    if (f) await useLatents(new Uint8Array(await f.arrayBuffer()), f.name);
  }));
  for (const b of document.querySelectorAll("button.sample")) {
    b.addEventListener("click", guard(() => useSample(b.dataset.sample)));
  }
  $("settings").addEventListener("submit", guard(async (e) => {
    e.preventDefault();
    if (state.original) await roundTrip();
  }));
  $("again").addEventListener("click", guard(decodeAgain));
  $("vary").addEventListener("click", guard(variability));
  $("auth-form").addEventListener("submit", guard(async (e) => {
    e.preventDefault();
    state.key = $("api-key").value.trim();
    $("api-key").value = "";
    await connect();
  }));

  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", guard(async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const f = e.dataTransfer.files[0];
    if (f) await useImage(f, f.name);
  }));
  // a file dropped outside the zone must not navigate away from the page
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  document.addEventListener("paste", guard(async (e) => {
    const item = [...e.clipboardData.items].find((i) => i.kind === "file" && i.type.startsWith("image/"));
    if (item) {
      const f = item.getAsFile();
      await useImage(f, f.name || "pasted.png");
      return;
    }
    const text = e.clipboardData.getData("text/plain").trim();
    if (text.startsWith("{") && e.target === document.body) {
      await useLatents(new TextEncoder().encode(text), "pasted.json");
    }
  }));
}

wire();
Promise.all([guard(connect)(), loadTiling()]);
