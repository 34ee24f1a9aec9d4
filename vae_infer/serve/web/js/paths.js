// Paths between two latent codes: graph, linear and slerp from POST /v1/interpolate (the server's
// vae_infer.interpolation), each drawn as a strip of its decoded frames with its path metrics.

import { postJSON } from "./api.js";
import { imageCanvas } from "./images.js";
import { PATH_COLOURS } from "./map.js";

export const METHODS = ["graph", "linear", "slerp"];
const STEPS = 10;
// path_metrics keys shown (those the server returns): how long the path is in data space, how even its steps are,
// and how faint its faintest frame is beside the two ends (paths through blank images look short but are not).
const SHOWN = [["length", "length in data space"], ["largest_step", "largest step"],
  ["step_evenness", "largest / mean step"], ["brightness_ratio_min", "faintest frame / ends"]];

// The three paths from the server, drawn into container unless isCurrent() says a newer pick replaced them
// meanwhile (then nothing is drawn and null is returned).
export async function drawPaths(container, za, zb, shape, isCurrent = () => true) {
  const results = await Promise.all(METHODS.map(async (method) => {
    try {
      return { method, ...(await postJSON("/v1/interpolate", { z_a: za, z_b: zb, steps: STEPS, method })) };
    } catch (e) {
      return { method, error: e.message };
    }
  }));
  if (!isCurrent()) return null;
  container.replaceChildren(...results.map((r) => strip(r, shape)));
  return results.filter((r) => !r.error).map((r) => ({ method: r.method, z: r.z }));
}

// What the paths view says while it has no pair: a hint, or that A is picked and B is awaited.
export function pathsNote(container, text) {
  const p = document.createElement("p");
  p.className = "note";
  p.textContent = text;
  container.replaceChildren(p);
}

function strip(r, shape) {
  const div = document.createElement("div");
  div.className = "strip";
  div.dataset.method = r.method;
  const title = document.createElement("h3");
  title.style.color = PATH_COLOURS[r.method];
  title.textContent = r.method;
  div.append(title);
  if (r.error) {
    const p = document.createElement("p");
    p.className = "error";
    p.textContent = r.error;
    div.append(p);
    return div;
  }
  const frames = document.createElement("div");
  frames.className = "frames";
  for (const row of r.x_hat) frames.append(imageCanvas(row, shape));
  div.append(frames);
  const scroll = document.createElement("div");
  scroll.className = "table-scroll";  // a narrow screen scrolls the table, never the page
  const table = document.createElement("table");
  const head = table.insertRow();
  const values = table.insertRow();
  for (const [key, label] of SHOWN.filter(([k]) => k in r.metrics)) {
    head.insertCell().textContent = label;
    const v = r.metrics[key];
    values.insertCell().textContent = typeof v === "number" ? v.toFixed(3) : "–";
  }
  scroll.append(table);
  div.append(scroll);
  return div;
}
