// Drawing image rows (values in [0, 1], or 0..255 with scale 1/255) onto canvases. A row is an image flattened
// row-major, channels last: h*w gray values, or h*w*3 for an RGB model (red, green, blue of each pixel adjacent).

// The model's image shape for the page: [h, w] for gray, [h, w, 3] for RGB (from /v1/info).
export function pageShape(info) {
  return info.channels === 3 ? [...info.image_shape, 3] : [...info.image_shape];
}

export function channelsOf(shape) {
  return shape.length > 2 ? shape[2] : 1;
}

export function drawImage(canvas, row, shape, scale = 1) {
  const [h, w] = shape;
  const c = channelsOf(shape);
  if (row.length !== h * w * c) throw new Error(`expected ${h * w * c} values for a ${shape.join(" x ")} image, got ${row.length}`);
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  const value = (j) => Math.max(0, Math.min(255, Math.round(row[j] * scale * 255)));
  for (let i = 0; i < h * w; i++) {
    if (c === 3) {
      img.data[4 * i] = value(3 * i);
      img.data[4 * i + 1] = value(3 * i + 1);
      img.data[4 * i + 2] = value(3 * i + 2);
    } else {
      img.data[4 * i] = img.data[4 * i + 1] = img.data[4 * i + 2] = value(i);
    }
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
  [canvas.height, canvas.width] = shape.slice(0, 2);
  drawImage(canvas, row, shape, scale);
  return canvas;
}

// Files past this size are refused before the browser decodes them (a small file can still unpack huge; the
// browser bounds that itself): the model sees a few thousand pixels, so nothing useful is this large.
export const MAX_FILE_BYTES = 32 * 1024 * 1024;

// An image file as one row of uint8 pixels at the model's size: composited on black (the data set's
// background), resized; for a gray model averaged over the colour channels, for an RGB one kept as red, green,
// blue per pixel (channels last).
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
  if (channelsOf(shape) === 3) {
    const row = new Array(h * w * 3);
    for (let i = 0; i < h * w; i++) for (let k = 0; k < 3; k++) row[3 * i + k] = data[4 * i + k];
    return row;
  }
  const row = new Array(h * w);
  for (let i = 0; i < h * w; i++) row[i] = Math.round((data[4 * i] + data[4 * i + 1] + data[4 * i + 2]) / 3);
  return row;
}
