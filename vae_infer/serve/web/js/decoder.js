// Decoding latent codes to images. In the browser with onnxruntime-web running the package's own decoder.onnx
// (fetched from the server, its sha256 checked against model.json), so hovering keeps up with the mouse; or,
// where onnxruntime-web is not installed beside the server, through POST /v1/decode (and the page says so).
//
// The page loads onnxruntime-web's CPU-only build (ort.wasm.min.mjs): the default build carries the WebGPU code,
// which makes functions from strings at run time, something the page's Content-Security-Policy refuses (as eval);
// the CPU build needs only 'wasm-unsafe-eval' to compile its WebAssembly, and is half the download.

import { getBytes, getJSON, postJSON } from "./api.js";

export const ORT_BUILD = "ort.wasm.min.mjs";

async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

class ApiDecoder {
  constructor(info, reason) {
    this.mode = "api";
    this.note = `${reason}: decoding through the server (POST /v1/decode)`;
    this.latentSize = info.latent_size;
  }

  async decode(z) {
    return (await postJSON("/v1/decode", { z })).x_hat;
  }
}

class BrowserDecoder {
  constructor(ort, session, info, note) {
    this.mode = "browser";
    this.ort = ort;
    this.session = session;
    this.input = info.decoder_input;
    this.output = info.decoder_output;
    this.features = info.features;
    this.latentSize = info.latent_size;
    this.note = note;
    this.queue = Promise.resolve();  // one run at a time: a wasm session does not run calls side by side
  }

  decode(z) {
    const run = async () => {
      const flat = Float32Array.from(z.flat());
      const feeds = { [this.input]: new this.ort.Tensor("float32", flat, [z.length, this.latentSize]) };
      const out = await this.session.run(feeds, [this.output]);
      const data = out[this.output].data;
      const rows = [];
      for (let i = 0; i < z.length; i++) rows.push(Array.from(data.subarray(i * this.features, (i + 1) * this.features)));
      return rows;
    };
    const result = this.queue.then(run, run);
    this.queue = result.catch(() => {});
    return result;
  }
}

// Where onnxruntime-web's CPU-only build lies: beside the entry the server names, on this page's own origin.
export function ortBuildURL(entry) {
  const url = new URL(entry, location.href);
  if (url.origin !== location.origin) throw new Error(`onnxruntime-web is offered from another origin (${url.origin})`);
  url.pathname = url.pathname.slice(0, url.pathname.lastIndexOf("/") + 1) + ORT_BUILD;
  url.search = url.hash = "";
  return url;
}

export async function createDecoder(info) {
  if (!info.browser_decode) return new ApiDecoder(info, "in-browser decoding is off");
  try {
    const entry = ortBuildURL(info.browser_decode);
    const ort = await import(entry.href);
    ort.env.wasm.wasmPaths = entry.href.slice(0, entry.href.lastIndexOf("/") + 1);  // its ort-wasm-* files: beside it
    ort.env.wasm.numThreads = 1;  // threads need cross-origin isolation; one is plenty for one small decoder
    ort.env.wasm.proxy = false;  // no worker: the page's policy allows none, and one decode takes under a millisecond
    const [bytes, manifest] = await Promise.all([getBytes(`/v1/files/${encodeURIComponent(info.decoder_file)}`),
      getJSON("/v1/files/model.json")]);
    let note;
    if (window.isSecureContext && crypto.subtle) {
      const want = manifest.files[info.decoder_file].sha256;
      const got = await sha256Hex(bytes);
      if (got !== want) {
        return new ApiDecoder(info, `in-browser decoding is off: ${info.decoder_file} from the server has sha256 `
          + `${got.slice(0, 12)}…, but model.json says ${String(want).slice(0, 12)}…`);
      }
      note = `decoding in the browser: onnxruntime-web ${ort.env.versions?.web || ""} (CPU) runs `
        + `${info.decoder_file} (sha256 ${got.slice(0, 12)}… verified against model.json)`;
    } else {
      note = `decoding in the browser with onnxruntime-web; the sha256 check of ${info.decoder_file} is skipped: `
        + "this page is not a secure context (serve it on localhost or over HTTPS)";
    }
    const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
    return new BrowserDecoder(ort, session, info, note);
  } catch (e) {
    return new ApiDecoder(info, `in-browser decoding is off (onnxruntime-web did not start: ${e.message})`);
  }
}
