// Text on the map canvas, placed so that no label covers another (or a marker): each label takes the first
// free spot among its candidates, or is left out. The placed rectangles are kept for the tests
// (window.__vaeLabelRects), in CSS pixels of the canvas.

export class LabelLayout {
  constructor(width, height) {
    this.width = width;
    this.height = height;
    this.rects = [];  // placed labels: {kind, text, x, y, w, h}
    this.obstacles = [];  // things labels must not cover besides each other (markers)
  }

  block(x, y, w, h) {
    this.obstacles.push({ x, y, w, h });
  }

  free(r) {
    if (r.x < 0 || r.y < 0 || r.x + r.w > this.width || r.y + r.h > this.height) return false;
    return ![...this.rects, ...this.obstacles].some((o) => r.x < o.x + o.w && o.x < r.x + r.w
      && r.y < o.y + o.h && o.y < r.y + r.h);
  }

  // candidates: top-left corners [x, y] in order of preference; the box is w x h. Returns the rect or null.
  place(kind, text, w, h, candidates) {
    for (const [x, y] of candidates) {
      const r = { kind, text, x, y, w, h };
      if (this.free(r)) {
        this.rects.push(r);
        return r;
      }
    }
    return null;
  }
}

// Width and height of text in the context's current font.
export function textBox(ctx, text) {
  const m = ctx.measureText(text);
  const ascent = m.fontBoundingBoxAscent ?? m.actualBoundingBoxAscent;
  const descent = m.fontBoundingBoxDescent ?? m.actualBoundingBoxDescent;
  return { w: Math.ceil(m.width), h: Math.ceil(ascent + descent), ascent };
}

// At most n characters of text (names from a package or a file can be long); the full text is in the legend.
export function shortened(text, n = 40) {
  const chars = Array.from(String(text));
  return chars.length <= n ? chars.join("") : `${chars.slice(0, n - 1).join("")}…`;
}
