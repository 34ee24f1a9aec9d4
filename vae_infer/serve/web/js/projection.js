// The plane the latent map is drawn in. A 1-D or 2-D latent is drawn as it is. A larger latent is drawn through
// the 2-D PCA projection stored with the map (GET /v1/latent-map's `projection`): a code z lands at
// p = (z - mean) · W, and a point p of the drawing stands for the code mean + W·p, the point of the PCA plane
// under it (so hovering decodes codes on that plane; the codes off it are reached by picking map points).

import { padded } from "./grid.js";

export class Plane {
  constructor(latentSize, projection) {
    this.latentSize = latentSize;
    this.projected = Boolean(projection);
    if (this.projected) {
      this.mean = projection.mean.map(Number);
      this.w = projection.components.map((row) => row.map(Number));  // (latent_size, 2)
      if (this.mean.length !== latentSize || this.w.length !== latentSize || this.w.some((r) => r.length !== 2)) {
        throw new Error(`the map's projection is for a ${this.mean.length}-D latent, this model's is ${latentSize}-D`);
      }
    }
  }

  // The code a point of the drawing stands for: mean + W·p, or p itself (padded) for a latent drawn as it is.
  toLatent(p) {
    if (!this.projected) return padded(p, this.latentSize);
    return this.mean.map((m, i) => m + this.w[i][0] * p[0] + this.w[i][1] * p[1]);
  }

  // Where a code lands on the drawing: (z - mean) · W, or the code itself.
  toPlane(z) {
    if (!this.projected) return z;
    const p = [0, 0];
    for (let i = 0; i < this.latentSize; i++) {
      const d = z[i] - this.mean[i];
      p[0] += d * this.w[i][0];
      p[1] += d * this.w[i][1];
    }
    return p;
  }

  // What the page says about the drawing (text, shown as textContent), or "" for a latent drawn as it is.
  note() {
    if (!this.projected) return "";
    return `This model's latent has ${this.latentSize} dimensions: the map shows the codes' 2-D PCA projection `
      + "p = (z − mean)·W (W: the two principal directions). Hovering decodes mean + W·p, the point on the PCA "
      + "plane under the pointer; a click near a map point picks that point's own code (elsewhere, mean + W·p). "
      + "Paths are computed in the full latent space and drawn projected.";
  }
}
