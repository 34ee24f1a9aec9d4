// The explorer page: wires the views (map, decoded image, paths, upload, manifold grid) to the server's API
// and the decoder. Everything it shows comes from the API or from onnxruntime-web running decoder.onnx, and is
// put on the page as text (textContent, elements made here): names from a package or a file are data, never markup.

import { getJSON, loginFromFragment } from "./api.js";
import { createDecoder } from "./decoder.js";
import { drawGrid, padded } from "./grid.js";
import { drawImage, fileToPixels, pageShape } from "./images.js";
import { MapView, PALETTE } from "./map.js";
import { drawPaths, pathsNote } from "./paths.js";
import { analyse, loadExamples, showResult } from "./upload.js";

const $ = (id) => document.getElementById(id);
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
  try {
    const found = await getJSON("/v1/latent-map");
    map = { z: found.z, labels: found.labels, names: found.class_names, source: found.source };
  } catch (e) {
    map = { z: [[-3, -3], [3, 3]], labels: null, names: null, source: `no map: ${e.message}` };
  }
  $("map-source").textContent = `(${map.source})`;
  if (map.names) showLegend($("legend"), map.names);

  // decode a point and show it; only the latest request is drawn, so a slow decode never lags the mouse
  let latest = 0;
  const show = async (z2, why) => {
    const ticket = ++latest;
    const z = padded(z2, info.latent_size);
    const t0 = performance.now();
    const [row] = await decoder.decode([z]);
    const ms = performance.now() - t0;
    if (ticket !== latest) return null;
    drawImage($("hover-image"), row, shape);
    $("hover-z").textContent = `z = (${z.map((v) => v.toFixed(3)).join(", ")})`;
    $("hover-time").textContent = `${why}: decoded ${decoder.mode === "browser" ? "in the browser" : "by the server"} `
      + `in ${ms.toFixed(2)} ms`;
    return { z, row, ms };
  };
  const hover = async (z2) => {
    const shown = await show(z2, "under the pointer");
    if (!shown) return;
    explorer.decodeMs.push(shown.ms);
    explorer.hovers += 1;
    explorer.lastHover = { z: shown.z, row: shown.row };
  };

  // picks: A, then B (then paths); a third pick starts a new pair, and the old pair's strips and lines go at once
  const picks = [];
  let pair = 0;
  const pick = async (z2, label) => {
    if (picks.length === 2) {
      picks.length = 0;
      view.setMarker("B", null);
      view.setPaths([]);
      explorer.pathsDrawn = 0;
    }
    const z = padded(z2, info.latent_size);
    picks.push(z);
    const name = picks.length === 1 ? "A" : "B";
    view.setMarker(name, z, "#fff", label ? `${name}: ${label}` : name);
    const ticket = ++pair;
    if (picks.length === 1) {
      pathsNote($("paths"), "A is picked: pick B on the map (or another test image).");
      return;
    }
    setStatus("computing paths…");
    pathsNote($("paths"), "computing the paths from A to B…");
    const paths = await drawPaths($("paths"), picks[0], picks[1], shape, () => ticket === pair);
    if (paths === null) return;  // a newer pick came first
    view.setPaths(paths);
    explorer.pathsDrawn = paths.length;
    setStatus(`${paths.length} paths drawn between A and B`);
  };

  let gridTimer = null;
  const redrawGrid = () => {
    clearTimeout(gridTimer);
    gridTimer = setTimeout(() => drawGrid($("grid"), decoder, view.visible(), shape).catch((e) => setStatus(
      `grid: ${e.message}`, "error")), 150);
  };

  const view = new MapView($("map"), map, { onHover: hover, onPick: (z) => pick(z), onViewChange: redrawGrid });
  explorer.map = view;
  $("grid-refresh").addEventListener("click", redrawGrid);
  redrawGrid();
  // the first view: the map's centre, decoded before any hover, so the image panel is never an empty box
  explorer.firstView = await show(view.centre(), "the map's centre");

  const showImage = async (pixels, title) => {
    setStatus(`encoding and scoring ${title}…`);
    const result = await analyse(pixels);
    showResult($("upload-result"), result, title);
    view.setMarker("image", result.z, "#ffeb3b", title);
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
