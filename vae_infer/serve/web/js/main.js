// The explorer page: wires the views (map, decoded image, paths, upload, manifold grid) to the server's API
// and the decoder. Everything it shows comes from the API or from onnxruntime-web running decoder.onnx, and is
// put on the page as text (textContent, elements made here): names from a package or a file are data, never markup.

import { getJSON, loginFromFragment } from "./api.js";
import { createDecoder } from "./decoder.js";
import { drawGrid } from "./grid.js";
import { drawImage, fileToPixels, pageShape } from "./images.js";
import { MapView, PALETTE } from "./map.js";
import { drawPaths, pathsNote } from "./paths.js";
import { Plane } from "./projection.js";
import { analyse, loadExamples, showResult } from "./upload.js";

const $ = (id) => document.getElementById(id);
const SNAP_PX = 6;  // a click this close to a map point (CSS pixels) picks that point's own code
const explorer = { ready: false, hovers: 0, pathsDrawn: 0, decodeMs: [] };
window.explorer = explorer;  // for people poking at it in the console, and for the browser tests

function setStatus(text, cls = "note") {
  $("status").textContent = text;
  $("status").className = cls;
}

function showLegend(container, names) {
  container.replaceChildren(...names.map((name, i) => {
    const item = document.createElement("span");
    item.className = "legend-item";
    const dot = document.createElement("i");
    dot.style.background = PALETTE[i % PALETTE.length];
    const text = document.createElement("span");
    text.className = "legend-name";
    text.textContent = String(name);
    item.append(dot, text);
    return item;
  }));
}

async function start() {
  await loginFromFragment();
  const info = await getJSON("/v1/info");
  explorer.info = info;
  const shape = pageShape(info);  // [h, w] gray or [h, w, 3] RGB: rows are channels-last
  $("model-name").textContent = `· ${info.name} (${info.latent_size}-D latent)`;
  const decoder = await createDecoder(info);
  explorer.decoder = decoder;
  $("decode-mode").textContent = decoder.note;
  $("decode-mode").className = decoder.mode === "browser" ? "note" : "warn";

  let map;
  let plane = new Plane(info.latent_size, null);
  try {
    const found = await getJSON("/v1/latent-map");
    plane = new Plane(info.latent_size, found.projection);
    map = { z: plane.projected ? found.projection.points : found.z, codes: found.z, labels: found.labels,
      names: found.class_names, source: found.source };
  } catch (e) {
    map = { z: [[-3, -3], [3, 3]], codes: null, labels: null, names: null, source: `no map: ${e.message}` };
  }
  explorer.plane = plane;
  $("map-source").textContent = `(${map.source}${plane.projected ? "; 2-D PCA projection" : ""})`;
  $("map-note").textContent = plane.note();
  $("map-note").hidden = !plane.projected;
  if (map.names) showLegend($("legend"), map.names);

  // decode a point and show it; only the latest request is drawn, so a slow decode never lags the mouse
  let latest = 0;
  const show = async (p, why) => {
    const ticket = ++latest;
    const z = plane.toLatent(p);
    const t0 = performance.now();
    const [row] = await decoder.decode([z]);
    const ms = performance.now() - t0;
    if (ticket !== latest) return null;
    drawImage($("hover-image"), row, shape);
    const onPlane = plane.projected ? `mean + W·p, p = (${p.map((v) => v.toFixed(3)).join(", ")}): ` : "";
    $("hover-z").textContent = `${onPlane}z = (${z.map((v) => v.toFixed(3)).join(", ")})`;
    $("hover-time").textContent = `${why}: decoded ${decoder.mode === "browser" ? "in the browser" : "by the server"} `
      + `in ${ms.toFixed(2)} ms`;
    return { p, z, row, ms };
  };
  const hover = async (p) => {
    const shown = await show(p, "under the pointer");
    if (!shown) return;
    explorer.decodeMs.push(shown.ms);
    explorer.hovers += 1;
    explorer.lastHover = { p: shown.p, z: shown.z, row: shown.row };
  };

  // picks: A, then B (then paths); a third pick starts a new pair, and the old pair's strips and lines go at once
  const picks = [];
  let pair = 0;
  // z: a full latent code (paths are computed between codes in the full latent space and drawn projected)
  const pick = async (z, label) => {
    if (picks.length === 2) {
      picks.length = 0;
      view.setMarker("B", null);
      view.setPaths([]);
      explorer.pathsDrawn = 0;
    }
    picks.push(z);
    explorer.picks = picks.slice();
    const name = picks.length === 1 ? "A" : "B";
    view.setMarker(name, plane.toPlane(z), "#fff", label ? `${name}: ${label}` : name);
    const ticket = ++pair;
    if (picks.length === 1) {
      pathsNote($("paths"), "A is picked: pick B on the map (or another test image).");
      return;
    }
    setStatus("computing paths…");
    pathsNote($("paths"), "computing the paths from A to B…");
    const paths = await drawPaths($("paths"), picks[0], picks[1], shape, () => ticket === pair);
    if (paths === null) return;  // a newer pick came first
    view.setPaths(paths.map((path) => ({ ...path, z: path.z.map((c) => plane.toPlane(c)) })));
    explorer.pathsDrawn = paths.length;
    setStatus(`${paths.length} paths drawn between A and B`);
  };

  let gridTimer = null;
  const redrawGrid = () => {
    clearTimeout(gridTimer);
    gridTimer = setTimeout(() => drawGrid($("grid"), gridDecoder, view.visible(), shape).catch((e) => setStatus(
      `grid: ${e.message}`, "error")), 150);
  };

  // the grid decodes points of the drawing: through the plane for a projected map
  const gridDecoder = plane.projected
    ? { latentSize: 2, decode: (points) => decoder.decode(points.map((p) => plane.toLatent(p))) } : decoder;
  // a click: the code of the map point under it (projected maps), else the code the point of the drawing stands for
  const pickAt = (p) => {
    const i = plane.projected && map.codes ? view.nearest(p, SNAP_PX) : -1;
    return pick(i >= 0 ? map.codes[i].map(Number) : plane.toLatent(p));
  };
  const view = new MapView($("map"), map, { onHover: hover, onPick: pickAt, onViewChange: redrawGrid });
  explorer.map = view;
  $("grid-refresh").addEventListener("click", redrawGrid);
  redrawGrid();
  // the first view: the map's centre, decoded before any hover, so the image panel is never an empty box
  explorer.firstView = await show(view.centre(), "the map's centre");

  const showImage = async (pixels, title) => {
    setStatus(`encoding and scoring ${title}…`);
    const result = await analyse(pixels);
    showResult($("upload-result"), result, title);
    view.setMarker("image", plane.toPlane(result.z), "#ffeb3b", title);
    explorer.lastResult = result;
    setStatus("ready");
    return result;
  };
  // a file that cannot be read is this upload's failure, said beside the upload; the page carries on
  const fromFile = (file) => fileToPixels(file, shape).then((pixels) => showImage(pixels, file.name)).catch((e) => {
    const p = document.createElement("p");
    p.className = "error";
    p.textContent = e.message;
    $("upload-result").replaceChildren(p);
    setStatus("ready");
  });
  $("upload").addEventListener("change", (e) => e.target.files[0] && fromFile(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) fromFile(e.dataTransfer.files[0]);
  });
  // a test image: its encoding and score; two picked in a row also become A and B of the paths view
  await loadExamples($("examples"), shape, (pixels, name) => showImage(pixels, name).then((r) => pick(r.z, name))
    .catch(fail));

  setStatus("ready");
  explorer.ready = true;
}

function fail(e) {
  setStatus(e.message, "error");
  explorer.error = e.message;
}

start().catch(fail);
