// The latent map: a sample of encoded images as points coloured by class (in the plane of projection.js: a
// larger latent's codes arrive here already projected, and so do markers and paths), with pan (drag), zoom (wheel),
// hover (the point under the mouse, decoded by the caller), clicks that pick points, paths and markers.
// The canvas follows its box on the page (any width, any pixel ratio); everything is drawn in CSS pixels.

import { fittedStep, ticks } from "./axes.js";
import { LabelLayout, shortened, textBox } from "./labels.js";

export const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf"];
export const PATH_COLOURS = { graph: "#c62828", linear: "#111111", slerp: "#1565c0" };
const TICK_FONT = "11px system-ui, sans-serif";
const MARKER_FONT = "bold 13px system-ui, sans-serif";
const MARKER_RADIUS = 7;
const SAME_SPOT_PX = 3;  // markers closer than this share one label
// Zoom bounds: the visible width stays between these many latent units (far past the data either way).
const MIN_SPAN = 1e-3;
const MAX_SPAN = 1e4;

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
    this.labelRects = [];
    this.ticks = null;
    this.measure();
    this.fit();
    this.listen();
    this.draw();
    new ResizeObserver(() => this.resized()).observe(canvas);
  }

  measure() {
    this.width = Math.max(1, this.canvas.clientWidth);
    this.height = Math.max(1, this.canvas.clientHeight);
    const ratio = window.devicePixelRatio || 1;
    this.canvas.width = Math.round(this.width * ratio);
    this.canvas.height = Math.round(this.height * ratio);
    this.ratio = ratio;
  }

  resized() {
    const before = this.width;
    this.measure();
    if (this.width !== before) this.scale *= this.width / before;  // the same region stays in view
    this.draw();
  }

  fit() {
    const xs = this.z.map((p) => p[0]).sort((a, b) => a - b);
    const ys = this.z.map((p) => p[1]).sort((a, b) => a - b);
    const q = (arr, f) => arr[Math.min(arr.length - 1, Math.floor(f * arr.length))];
    const [x0, x1, y0, y1] = [q(xs, 0.005), q(xs, 0.995), q(ys, 0.005), q(ys, 0.995)];
    this.cx = (x0 + x1) / 2;
    this.cy = (y0 + y1) / 2;
    this.scale = 0.9 * Math.min(this.width / (x1 - x0 || 1), this.height / (y1 - y0 || 1));
  }

  centre() {
    return [this.cx, this.cy];
  }

  toScreen([x, y]) {
    return [this.width / 2 + (x - this.cx) * this.scale, this.height / 2 - (y - this.cy) * this.scale];
  }

  toLatent(px, py) {
    return [this.cx + (px - this.width / 2) / this.scale, this.cy - (py - this.height / 2) / this.scale];
  }

  visible() {
    const [x0, y1] = this.toLatent(0, 0);
    const [x1, y0] = this.toLatent(this.width, this.height);
    return { x0, x1, y0, y1 };
  }

  eventPos(e) {
    return [e.offsetX, e.offsetY];  // CSS pixels inside the canvas's border, whatever its size on the page
  }

  zoom(pos, factor) {
    const before = this.toLatent(...pos);
    this.scale = Math.min(this.width / MIN_SPAN, Math.max(this.width / MAX_SPAN, this.scale * factor));
    const after = this.toLatent(...pos);
    this.cx += before[0] - after[0];
    this.cy += before[1] - after[1];
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
      this.zoom(this.eventPos(e), Math.exp(-e.deltaY * 0.0015));
      this.draw();
      this.onViewChange();
    }, { passive: false });
  }

  // The index of the map point nearest the drawing's point p, when it lies within px CSS pixels; else -1.
  nearest(p, px) {
    const [sx, sy] = this.toScreen(p);
    let best = -1;
    let bestD = px;
    for (let i = 0; i < this.z.length; i++) {
      const [x, y] = this.toScreen(this.z[i]);
      const d = Math.hypot(x - sx, y - sy);
      if (d <= bestD) {
        best = i;
        bestD = d;
      }
    }
    return best;
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
    const { ctx } = this;
    ctx.setTransform(this.ratio, 0, 0, this.ratio, 0, 0);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, this.width, this.height);
    const layout = new LabelLayout(this.width, this.height);
    this.drawAxes(layout);
    ctx.globalAlpha = 0.55;
    for (let i = 0; i < this.z.length; i++) {
      const [x, y] = this.toScreen(this.z[i]);
      if (x < -2 || y < -2 || x > this.width + 2 || y > this.height + 2) continue;
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
    this.drawMarkers(layout);
    this.labelRects = layout.rects;
    window.__vaeLabelRects = layout.rects;
  }

  drawMarkers(layout) {
    const { ctx } = this;
    // markers on the same spot (a test image that is also pick A) share one label: "A: Coat", not "Coat" under it
    const spots = [];
    const picksFirst = (a, b) => (a[0].length === 1 ? 0 : 1) - (b[0].length === 1 ? 0 : 1);  // "A", "B" lead
    for (const [name, m] of Object.entries(this.markers).sort(picksFirst)) {
      const [x, y] = this.toScreen(m.z);
      const spot = spots.find((s) => Math.hypot(s.x - x, s.y - y) < SAME_SPOT_PX);
      if (spot) spot.items.push({ name, ...m });
      else spots.push({ x, y, items: [{ name, ...m }] });
    }
    for (const { x, y, items } of spots) {
      for (const { colour } of items) {
        ctx.fillStyle = colour;
        ctx.strokeStyle = "#000";
        ctx.lineWidth = 1.5;
        ctx.beginPath();
        ctx.arc(x, y, MARKER_RADIUS, 0, 2 * Math.PI);
        ctx.fill();
        ctx.stroke();
      }
      layout.block(x - MARKER_RADIUS - 1, y - MARKER_RADIUS - 1, 2 * MARKER_RADIUS + 2, 2 * MARKER_RADIUS + 2);
    }
    ctx.font = MARKER_FONT;
    ctx.textBaseline = "alphabetic";
    for (const { x, y, items } of spots) {
      const texts = items.map((m) => String(m.label));
      const text = shortened(texts.filter((t) => !texts.some((o) => o !== t && o.endsWith(t))).join(" · "));
      const { w, h, ascent } = textBox(ctx, text);
      const box = { w: w + 6, h: h + 2 };
      const gap = MARKER_RADIUS + 3;
      const candidates = [];
      for (let k = 0; k < 6; k++) {
        const up = y - gap - box.h - k * box.h;
        const below = y + gap + k * box.h;
        candidates.push([x + gap, up], [x + gap, below], [x - gap - box.w, up], [x - gap - box.w, below]);
      }
      const spot = layout.place("marker", text, box.w, box.h, candidates);
      if (!spot) continue;  // no free room near the marker at this zoom: better no label than one over another
      ctx.fillStyle = "rgba(255, 255, 255, 0.85)";
      ctx.fillRect(spot.x, spot.y, spot.w, spot.h);
      ctx.fillStyle = "#000";
      ctx.fillText(text, spot.x + 3, spot.y + 1 + ascent);
    }
  }

  drawAxes(layout) {
    const { ctx } = this;
    const { x0, x1, y0, y1 } = this.visible();
    ctx.font = TICK_FONT;
    ctx.textBaseline = "alphabetic";
    const step = fittedStep(this.scale, Math.min(x0, y0), Math.max(x1, y1), (t) => ctx.measureText(t).width);
    const xs = ticks(x0, x1, step);
    const ys = ticks(y0, y1, step);
    this.ticks = { step, px: step * this.scale, x: xs.map((t) => t.label), y: ys.map((t) => t.label) };
    ctx.strokeStyle = "#e6e6e6";
    ctx.lineWidth = 1;
    for (const { value } of xs) {
      const [sx] = this.toScreen([value, 0]);
      ctx.beginPath();
      ctx.moveTo(sx, 0);
      ctx.lineTo(sx, this.height);
      ctx.stroke();
    }
    for (const { value } of ys) {
      const [, sy] = this.toScreen([0, value]);
      ctx.beginPath();
      ctx.moveTo(0, sy);
      ctx.lineTo(this.width, sy);
      ctx.stroke();
    }
    ctx.fillStyle = "#595959";  // 7:1 on white
    for (const { value, label } of xs) {
      const [sx] = this.toScreen([value, 0]);
      const { w, h, ascent } = textBox(ctx, label);
      const r = layout.place("tick-x", label, w, h, [[sx + 2, this.height - h - 2]]);
      if (r) ctx.fillText(label, r.x, r.y + ascent);
    }
    for (const { value, label } of ys) {
      const [, sy] = this.toScreen([0, value]);
      const { w, h, ascent } = textBox(ctx, label);
      const r = layout.place("tick-y", label, w, h, [[2, sy - h - 1]]);
      if (r) ctx.fillText(label, r.x, r.y + ascent);
    }
  }
}
