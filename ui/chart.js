// A price line on a canvas: seeded from /api/v1/history, extended live. Written
// by hand (about a hundred lines) rather than vendored: one line series needs no
// library, and the page stays free of third-party code to pin and refresh.

const MAX_POINTS = 600;

export class Chart {
  constructor(canvas) {
    this.canvas = canvas;
    this.points = []; // [time ms, price], oldest first
    this.dirty = true;
  }

  // Adds a point in time order; an older one (a late history answer) is merged in.
  add(t, price) {
    if (!Number.isFinite(t) || !Number.isFinite(price)) return;
    const pts = this.points;
    if (pts.length === 0 || t >= pts[pts.length - 1][0]) {
      pts.push([t, price]);
    } else {
      let i = pts.length;
      while (i > 0 && pts[i - 1][0] > t) i--;
      if (i > 0 && pts[i - 1][0] === t) return;
      pts.splice(i, 0, [t, price]);
    }
    if (pts.length > MAX_POINTS) pts.splice(0, pts.length - MAX_POINTS);
    this.dirty = true;
  }

  clear() {
    this.points = [];
    this.dirty = true;
  }

  // Draws if anything changed or the canvas was resized; colours from CSS.
  draw() {
    const c = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(c.clientWidth * ratio));
    const h = Math.max(1, Math.round(c.clientHeight * ratio));
    if (c.width !== w || c.height !== h) {
      c.width = w;
      c.height = h;
      this.dirty = true;
    }
    if (!this.dirty) return;
    this.dirty = false;
    const css = getComputedStyle(c);
    const line = css.getPropertyValue("--chart-line").trim() || "#3b82f6";
    const grid = css.getPropertyValue("--chart-grid").trim() || "#8884";
    const text = css.getPropertyValue("--muted").trim() || "#888";
    const ctx = c.getContext("2d");
    ctx.clearRect(0, 0, w, h);
    const pts = this.points;
    if (pts.length < 2) {
      ctx.fillStyle = text;
      ctx.font = `${12 * ratio}px system-ui, sans-serif`;
      ctx.fillText("waiting for trades…", 8 * ratio, h / 2);
      return;
    }
    let lo = Infinity;
    let hi = -Infinity;
    for (const [, p] of pts) {
      lo = Math.min(lo, p);
      hi = Math.max(hi, p);
    }
    if (hi === lo) {
      hi += 1e-9 + Math.abs(hi) * 1e-6;
      lo -= 1e-9 + Math.abs(lo) * 1e-6;
    }
    const pad = 6 * ratio;
    const labelW = 84 * ratio;
    const t0 = pts[0][0];
    const t1 = pts[pts.length - 1][0];
    const x = (t) => pad + ((t - t0) / Math.max(1, t1 - t0)) * (w - 2 * pad - labelW);
    const y = (p) => pad + (1 - (p - lo) / (hi - lo)) * (h - 2 * pad);
    ctx.strokeStyle = grid;
    ctx.lineWidth = 1;
    ctx.fillStyle = text;
    ctx.font = `${11 * ratio}px system-ui, sans-serif`;
    const step = (hi - lo) / 3;
    for (let i = 0; i <= 3; i++) {
      const p = lo + ((hi - lo) * i) / 3;
      ctx.beginPath();
      ctx.moveTo(pad, y(p));
      ctx.lineTo(w - labelW, y(p));
      ctx.stroke();
      ctx.fillText(formatPrice(p, step), w - labelW + 4 * ratio, y(p) + 4 * ratio);
    }
    ctx.strokeStyle = line;
    ctx.lineWidth = 1.5 * ratio;
    ctx.beginPath();
    pts.forEach(([t, p], i) => (i === 0 ? ctx.moveTo(x(t), y(p)) : ctx.lineTo(x(t), y(p))));
    ctx.stroke();
  }
}

// A price with the decimals its size calls for, or enough to tell apart values
// `step` apart (the chart's axis over a narrow range).
export function formatPrice(p, step = 0) {
  const abs = Math.abs(p);
  let digits = abs >= 1000 ? 2 : abs >= 1 ? 4 : 8;
  if (step > 0) digits = Math.min(10, Math.max(digits, Math.ceil(-Math.log10(step))));
  return p.toLocaleString("en-US", { minimumFractionDigits: Math.min(digits, 2), maximumFractionDigits: digits });
}
