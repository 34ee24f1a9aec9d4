// The explorer page: wires the views (map, decoded image, paths, upload, manifold grid) to the server's API
// and the decoder. Everything it shows comes from the API or from onnxruntime-web running decoder.onnx.

import { getJSON } from "./api.js";
import { createDecoder } from "./decoder.js";
import { drawGrid, padded } from "./grid.js";
import { drawImage } from "./images.js";
import { MapView, PALETTE } from "./map.js";
import { drawPaths } from "./paths.js";
import { analyse, loadExamples, showResult } from "./upload.js";

const $ = (id) => document.getElementById(id);
const explorer = { ready: false, hovers: 0, pathsDrawn: 0, decodeMs: [] };
window.explorer = explorer;  // for people poking at it in the console, and for the browser tests

function setStatus(text, cls = "note") {
  $("status").textContent = text;
  $("status").className = cls;
}

async function start() {
  const info = await getJSON("/v1/info");
  explorer.info = info;
  const shape = info.image_shape;
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
  if (map.names) {
    $("legend").innerHTML = map.names.map((n, i) => `<span><i style="background:${PALETTE[i]}"></i>${n}</span>`).join("");
  }

  // hover: decode the point under the mouse; only the latest request is drawn, so a slow decode never lags
  let latest = 0;
  const hover = async (z2) => {
    const ticket = ++latest;
    const z = padded(z2, info.latent_size);
    const t0 = performance.now();
    const [row] = await decoder.decode([z]);
    const ms = performance.now() - t0;
    explorer.decodeMs.push(ms);
    if (ticket !== latest) return;
    drawImage($("hover-image"), row, shape);
    $("hover-z").textContent = `z = (${z.map((v) => v.toFixed(3)).join(", ")})`;
    $("hover-time").textContent = `decoded ${decoder.mode === "browser" ? "in the browser" : "by the server"} `
      + `in ${ms.toFixed(2)} ms`;
    explorer.hovers += 1;
    explorer.lastHover = { z, row };
  };

  const picks = [];
  const pick = async (z2, label) => {
    if (picks.length === 2) {
      picks.length = 0;
      view.setMarker("B", null);
      view.setPaths([]);
    }
    const z = padded(z2, info.latent_size);
    picks.push(z);
    const name = picks.length === 1 ? "A" : "B";
    view.setMarker(name, z, "#fff", label ? `${name}: ${label}` : name);
    if (picks.length === 2) {
      setStatus("computing paths…");
      const paths = await drawPaths($("paths"), picks[0], picks[1], shape);
      view.setPaths(paths);
      explorer.pathsDrawn = paths.length;
      setStatus(`${paths.length} paths drawn between A and B`);
    }
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

  const showImage = async (pixels, title) => {
    setStatus(`encoding and scoring ${title}…`);
    const result = await analyse(pixels);
    showResult($("upload-result"), result, title);
    view.setMarker("image", result.z, "#ffeb3b", title);
    explorer.lastResult = result;
    setStatus("ready");
    return result;
  };
  const fromFile = async (file) => {
    const { fileToPixels } = await import("./images.js");
    return showImage(await fileToPixels(file, shape), file.name);
  };
  $("upload").addEventListener("change", (e) => e.target.files[0] && fromFile(e.target.files[0]).catch(fail));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) fromFile(e.dataTransfer.files[0]).catch(fail);
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
