// Axis ticks for the latent map: steps of 1, 2 or 5 x 10^k, the smallest whose ticks lie far enough apart on
// screen (at least MIN_TICK_PX, and wider than their widest label), at any zoom.

export const MIN_TICK_PX = 40;
const MULTIPLES = [1, 2, 5];

// The smallest 1/2/5 x 10^k step that is at least minPx on screen at pxPerUnit.
export function niceStep(pxPerUnit, minPx = MIN_TICK_PX) {
  let k = Math.floor(Math.log10(minPx / pxPerUnit));
  for (;; k++) {
    for (const m of MULTIPLES) {
      const step = m * 10 ** k;
      if (step * pxPerUnit >= minPx) return step;
    }
  }
}

// Decimals that show every multiple of step exactly (0.2 -> 1, 5e-3 -> 3, 10 -> 0).
export function stepDecimals(step) {
  return Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
}

// The multiples of step in [lo, hi], as numbers and as labels.
export function ticks(lo, hi, step) {
  const decimals = stepDecimals(step);
  const out = [];
  for (let i = Math.ceil(lo / step); i * step <= hi; i++) {
    const value = i * step;
    out.push({ value, label: (value === 0 ? 0 : value).toFixed(decimals) });
  }
  return out;
}

// A step that fits its own labels: measure(label) -> width in px; gap: px kept free between two labels.
export function fittedStep(pxPerUnit, lo, hi, measure, gap = 8) {
  let minPx = MIN_TICK_PX;
  for (let tries = 0; tries < 4; tries++) {
    const step = niceStep(pxPerUnit, minPx);
    const widest = Math.max(0, ...ticks(lo, hi, step).map((t) => measure(t.label)));
    if (widest + gap <= step * pxPerUnit) return step;
    minPx = widest + gap;
  }
  return niceStep(pxPerUnit, minPx);
}
