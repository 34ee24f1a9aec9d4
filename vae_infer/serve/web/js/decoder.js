// Decoding latent codes to images. In the browser with onnxruntime-web running the package's own decoder.onnx
// (fetched from the server, its sha256 checked against model.json), so hovering keeps up with the mouse; or,
// where onnxruntime-web is not installed beside the server, through POST /v1/decode (and the page says so).

import { getBytes, getJSON, postJSON } from "./api.js";

async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

class ApiDecoder {
  constructor(info, reason) {
    this.mode = "api";
    this.note = `decoding through the API (POST /v1/decode): ${reason}`;
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

export async function createDecoder(info) {
  if (!info.browser_decode) {
    return new ApiDecoder(info, "onnxruntime-web is not installed beside the server (run `make web`, or start it "
      + "with --web-assets DIR)");
  }
  try {
    const ort = await import(info.browser_decode);
    const base = info.browser_decode.slice(0, info.browser_decode.lastIndexOf("/") + 1);
    ort.env.wasm.wasmPaths = base;  // it loads its ort-wasm-* files from beside ort.min.mjs, never a CDN
    ort.env.wasm.numThreads = 1;  // threads need cross-origin isolation; one is plenty for one small decoder
    const [bytes, manifest] = await Promise.all([getBytes(`/v1/files/${info.decoder_file}`),
      getJSON("/v1/files/model.json")]);
    let note;
    if (window.isSecureContext && crypto.subtle) {
      const want = manifest.files[info.decoder_file].sha256;
      const got = await sha256Hex(bytes);
      if (got !== want) {
        return new ApiDecoder(info, `${info.decoder_file} from the server has sha256 ${got.slice(0, 12)}…, but `
          + `model.json says ${want.slice(0, 12)}…; not running it`);
      }
      note = `decoding in the browser: onnxruntime-web ${ort.env.versions?.web || ""} runs ${info.decoder_file} `
        + `(sha256 ${got.slice(0, 12)}… verified against model.json)`;
    } else {
      note = `decoding in the browser with onnxruntime-web; the sha256 check of ${info.decoder_file} is skipped: `
        + "this page is not a secure context (serve it on localhost or over HTTPS)";
    }
    const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
    return new BrowserDecoder(ort, session, info, note);
  } catch (e) {
    return new ApiDecoder(info, `onnxruntime-web failed to start (${e.message})`);
  }
}
