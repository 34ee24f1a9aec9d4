// The latent map: a sample of encoded images as points coloured by class, with pan (drag), zoom (wheel),
// hover (the point under the mouse, decoded by the caller), clicks that pick points, paths and markers.

export const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf"];
export const PATH_COLOURS = { graph: "#d62728", linear: "#111111", slerp: "#1f77b4" };

export class MapView {
  constructor(canvas, { z, labels }, { onHover, onPick, onViewChange }) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.z = z;
    this.labels = labels;
    this.onHover = onHover;
    this.onPick = onPick;
    this.onViewChange = onViewChange;
    this.markers = {};  // name -> {z, colour, label}
    this.paths = [];  // {method, z: [[x, y], ...]}
    this.fit();
    this.listen();
    this.draw();
  }

  fit() {
    const xs = this.z.map((p) => p[0]).sort((a, b) => a - b);
    const ys = this.z.map((p) => p[1]).sort((a, b) => a - b);
    const q = (arr, f) => arr[Math.min(arr.length - 1, Math.floor(f * arr.length))];
    const [x0, x1, y0, y1] = [q(xs, 0.005), q(xs, 0.995), q(ys, 0.005), q(ys, 0.995)];
    this.cx = (x0 + x1) / 2;
    this.cy = (y0 + y1) / 2;
    this.scale = 0.9 * Math.min(this.canvas.width / (x1 - x0 || 1), this.canvas.height / (y1 - y0 || 1));
  }

  toScreen([x, y]) {
    return [this.canvas.width / 2 + (x - this.cx) * this.scale, this.canvas.height / 2 - (y - this.cy) * this.scale];
  }

  toLatent(px, py) {
    return [this.cx + (px - this.canvas.width / 2) / this.scale, this.cy - (py - this.canvas.height / 2) / this.scale];
  }

  visible() {
    const [x0, y1] = this.toLatent(0, 0);
    const [x1, y0] = this.toLatent(this.canvas.width, this.canvas.height);
    return { x0, x1, y0, y1 };
  }

  eventPos(e) {
    const r = this.canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * (this.canvas.width / r.width), (e.clientY - r.top) * (this.canvas.height / r.height)];
  }

  listen() {
    let down = null;
    this.canvas.addEventListener("pointerdown", (e) => {
      down = { pos: this.eventPos(e), cx: this.cx, cy: this.cy, moved: false, shift: e.shiftKey };
      this.canvas.setPointerCapture(e.pointerId);
    });
    this.canvas.addEventListener("pointermove", (e) => {
      const pos = this.eventPos(e);
      if (down && !down.shift) {
        const dx = pos[0] - down.pos[0];
        const dy = pos[1] - down.pos[1];
        if (down.moved || Math.hypot(dx, dy) > 4) {
          down.moved = true;
          this.cx = down.cx - dx / this.scale;
          this.cy = down.cy + dy / this.scale;
          this.draw();
          return;
        }
      }
      this.onHover(this.toLatent(...pos));  // hover, or shift-drag: decode under the pointer
    });
    this.canvas.addEventListener("pointerup", (e) => {
      if (down && !down.moved) this.onPick(this.toLatent(...this.eventPos(e)));
      if (down && down.moved) this.onViewChange();
      down = null;
    });
    this.canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      const pos = this.eventPos(e);
      const before = this.toLatent(...pos);
      this.scale *= Math.exp(-e.deltaY * 0.0015);
      const after = this.toLatent(...pos);
      this.cx += before[0] - after[0];
      this.cy += before[1] - after[1];
      this.draw();
      this.onViewChange();
    }, { passive: false });
  }

  setMarker(name, z, colour, label) {
    if (z === null) delete this.markers[name];
    else this.markers[name] = { z, colour, label };
    this.draw();
  }

  setPaths(paths) {
    this.paths = paths;
    this.draw();
  }

  draw() {
    const { ctx, canvas } = this;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    this.drawAxes();
    ctx.globalAlpha = 0.55;
    for (let i = 0; i < this.z.length; i++) {
      const [x, y] = this.toScreen(this.z[i]);
      if (x < -2 || y < -2 || x > canvas.width + 2 || y > canvas.height + 2) continue;
      ctx.fillStyle = this.labels ? PALETTE[this.labels[i] % PALETTE.length] : "#455a64";
      ctx.fillRect(x - 1.5, y - 1.5, 3, 3);
    }
    ctx.globalAlpha = 1;
    for (const path of this.paths) {
      ctx.strokeStyle = PATH_COLOURS[path.method] || "#000";
      ctx.lineWidth = 2.5;
      ctx.beginPath();
      path.z.forEach((p, i) => (i ? ctx.lineTo(...this.toScreen(p)) : ctx.moveTo(...this.toScreen(p))));
      ctx.stroke();
      ctx.fillStyle = ctx.strokeStyle;
      for (const p of path.z) {
        const [x, y] = this.toScreen(p);
        ctx.fillRect(x - 2, y - 2, 4, 4);
      }
    }
    for (const { z, colour, label } of Object.values(this.markers)) {
      const [x, y] = this.toScreen(z);
      ctx.fillStyle = colour;
      ctx.strokeStyle = "#000";
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      ctx.arc(x, y, 7, 0, 2 * Math.PI);
      ctx.fill();
      ctx.stroke();
      ctx.fillStyle = "#000";
      ctx.font = "bold 13px sans-serif";
      ctx.fillText(label, x + 9, y - 8);
    }
  }

  drawAxes() {
    const { ctx } = this;
    const { x0, x1, y0, y1 } = this.visible();
    const step = 10 ** Math.floor(Math.log10((x1 - x0) / 4));
    ctx.strokeStyle = "#eee";
    ctx.lineWidth = 1;
    ctx.fillStyle = "#999";
    ctx.font = "10px sans-serif";
    for (let x = Math.ceil(x0 / step) * step; x <= x1; x += step) {
      const [sx] = this.toScreen([x, 0]);
      ctx.beginPath();
      ctx.moveTo(sx, 0);
      ctx.lineTo(sx, this.canvas.height);
      ctx.stroke();
      ctx.fillText(+x.toFixed(6), sx + 2, this.canvas.height - 3);
    }
    for (let y = Math.ceil(y0 / step) * step; y <= y1; y += step) {
      const [, sy] = this.toScreen([0, y]);
      ctx.beginPath();
      ctx.moveTo(0, sy);
      ctx.lineTo(this.canvas.width, sy);
      ctx.stroke();
      ctx.fillText(+y.toFixed(6), 2, sy - 2);
    }
  }
}
