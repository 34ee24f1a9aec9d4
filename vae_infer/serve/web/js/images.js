// Drawing image rows (values in [0, 1], or 0..255 with scale 1/255) onto canvases.

export function drawImage(canvas, row, shape, scale = 1) {
  const [h, w] = shape;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  for (let i = 0; i < h * w; i++) {
    const v = Math.max(0, Math.min(255, Math.round(row[i] * scale * 255)));
    img.data[4 * i] = img.data[4 * i + 1] = img.data[4 * i + 2] = v;
    img.data[4 * i + 3] = 255;
  }
  const tile = document.createElement("canvas");
  tile.width = w;
  tile.height = h;
  tile.getContext("2d").putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = false;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(tile, 0, 0, canvas.width, canvas.height);
}

export function imageCanvas(row, shape, scale = 1) {
  const canvas = document.createElement("canvas");
  [canvas.height, canvas.width] = shape;
  drawImage(canvas, row, shape, scale);
  return canvas;
}

// Files past this size are refused before the browser decodes them (a small file can still unpack huge; the
// browser bounds that itself): the model sees 28 x 28 pixels, so nothing useful is this large.
export const MAX_FILE_BYTES = 32 * 1024 * 1024;

// An image file as one row of uint8 gray pixels at the model's size: composited on black (the data set's
// background), resized, averaged over the colour channels.
export async function fileToPixels(file, shape) {
  const [h, w] = shape;
  if (file.size > MAX_FILE_BYTES) {
    throw new Error(`${file.name} is ${(file.size / 2 ** 20).toFixed(1)} MiB; the page reads images of up to `
      + `${MAX_FILE_BYTES / 2 ** 20} MiB (the model sees ${h} x ${w} pixels): make it smaller first`);
  }
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (e) {
    throw new Error(`${file.name} is not an image this browser can read (PNG, JPEG, GIF, WebP): ${e.message}`);
  }
  const canvas = document.createElement("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, w, h);
  ctx.drawImage(bitmap, 0, 0, w, h);
  const data = ctx.getImageData(0, 0, w, h).data;
  const row = new Array(h * w);
  for (let i = 0; i < h * w; i++) row[i] = Math.round((data[4 * i] + data[4 * i + 1] + data[4 * i + 2]) / 3);
  return row;
}
