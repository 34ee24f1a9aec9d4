// The manifold view of the course's figure: an n x n grid of latent codes over the visible region of the map,
// each decoded (by the same decoder as the hover view) and drawn in its place.

import { drawImage } from "./images.js";

export async function drawGrid(canvas, decoder, region, shape, n = 15) {
  const z = [];
  for (let r = 0; r < n; r++) {
    for (let c = 0; c < n; c++) {
      const x = region.x0 + ((c + 0.5) / n) * (region.x1 - region.x0);
      const y = region.y1 - ((r + 0.5) / n) * (region.y1 - region.y0);  // top row = largest y, as on the map
      z.push(padded([x, y], decoder.latentSize));
    }
  }
  const rows = await decoder.decode(z);
  const ctx = canvas.getContext("2d");
  const cell = canvas.width / n;
  const tile = document.createElement("canvas");
  tile.width = tile.height = Math.ceil(cell);
  rows.forEach((row, i) => {
    drawImage(tile, row, shape);
    ctx.drawImage(tile, (i % n) * cell, Math.floor(i / n) * cell, cell, cell);
  });
}

export function padded(z2, size) {
  const z = new Array(size).fill(0);
  z[0] = z2[0];
  if (size > 1) z[1] = z2[1];
  return z;
}
