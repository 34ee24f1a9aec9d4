// An image's encoding, anomaly score and flag: a dropped or chosen PNG, or one of the server's test images.
// The page sends the pixels; the server encodes (POST /v1/encode) and scores (POST /v1/detect, or /v1/score
// when the model is not calibrated).

import { ApiError, getJSON, postJSON } from "./api.js";
import { imageCanvas } from "./images.js";

export async function analyse(pixels) {
  const images = [pixels];
  const { mu } = await postJSON("/v1/encode", { images, dtype: "uint8" });
  try {
    const d = await postJSON("/v1/detect", { images, dtype: "uint8" });
    return { z: mu[0], kind: d.kind, score: d.scores[0], flag: d.flags[0], threshold: d.threshold };
  } catch (e) {
    if (!(e instanceof ApiError) || e.status !== 409) throw e;
    const s = await postJSON("/v1/score", { images, dtype: "uint8", kind: "nelbo" });
    return { z: mu[0], kind: s.kind, score: s.scores[0], flag: null, note: e.message };
  }
}

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

// The result as elements and text: the title is a file name or a class name, text from outside the page.
export function showResult(container, result, title) {
  const p = el("p");
  const flag = result.flag === null ? el("span", "note", "no flag: the model is not calibrated")
    : result.flag ? el("span", "flagged", "flagged: unlike the training data") : el("span", "normal", "not flagged");
  const score = el("span", null, `score (${result.kind}) ${result.score.toFixed(2)}`);
  score.id = "upload-score";
  const threshold = result.threshold !== undefined ? ` (threshold ${result.threshold.toFixed(2)})` : "";
  p.append(el("b", "title", String(title)), el("br"), `z = (${result.z.map((v) => v.toFixed(3)).join(", ")})`,
    el("br"), score, threshold, el("br"), flag);
  container.replaceChildren(p);
}

export async function loadExamples(container, shape, onPick) {
  let found;
  try {
    found = await getJSON("/v1/examples");
  } catch (e) {
    container.textContent = `no test images: ${e.message}`;
    return [];
  }
  found.images.forEach((pixels, i) => {
    const canvas = imageCanvas(pixels, shape, 1 / 255);
    const name = found.class_names && found.labels ? found.class_names[found.labels[i]] : `test image ${i}`;
    canvas.title = name;
    canvas.dataset.index = i;
    canvas.addEventListener("click", () => {
      container.querySelectorAll("canvas").forEach((c) => c.classList.remove("picked"));
      canvas.classList.add("picked");
      onPick(pixels, name);
    });
    container.append(canvas);
  });
  return found.images;
}
