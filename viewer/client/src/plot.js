// The loss curve: a small canvas line plot of log.jsonl (any numeric column against step).

import { h } from './dom.js';

const PAD = { left: 46, right: 10, top: 10, bottom: 22 };

/** Numeric columns of the log other than the x axis. */
export function logColumns(rows) {
  const keys = new Set();
  for (const row of rows) for (const [k, v] of Object.entries(row)) if (typeof v === 'number' && k !== 'step') keys.add(k);
  keys.delete('time_s');
  return [...keys];
}

function niceTicks(lo, hi, count) {
  const span = hi - lo || Math.abs(hi) || 1;
  const step0 = span / count;
  const mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0) || step0;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-9 * span; t += step) ticks.push(t);
  return ticks;
}

function label(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(0);
  return String(Number(v.toPrecision(3)));
}

/** Draw `rows[column]` against `rows.step` into `canvas` (log y when all values are > 0). */
export function drawCurve(canvas, rows, column) {
  const dpr = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 300;
  const height = canvas.clientHeight || 160;
  canvas.width = Math.round(width * dpr);
  canvas.height = Math.round(height * dpr);
  const ctx = canvas.getContext('2d');
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.font = '10px system-ui, sans-serif';
  ctx.fillStyle = '#9aa4b2';
  const pts = rows.filter((r) => typeof r[column] === 'number' && Number.isFinite(r[column]) && typeof r.step === 'number');
  if (pts.length === 0) {
    ctx.fillText(rows.length ? `no ${column} values in log.jsonl` : 'no log.jsonl (yet, or a method without iterations)', 8, height / 2);
    return;
  }
  const logY = pts.every((p) => p[column] > 0);
  const ys = pts.map((p) => (logY ? Math.log10(p[column]) : p[column]));
  const xs = pts.map((p) => p.step);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const sx = (x) => PAD.left + ((x - x0) / (x1 - x0)) * (width - PAD.left - PAD.right);
  const sy = (y) => height - PAD.bottom - ((y - y0) / (y1 - y0)) * (height - PAD.top - PAD.bottom);
  ctx.strokeStyle = '#2a313c';
  ctx.lineWidth = 1;
  const yTicks = logY ? niceTicks(Math.floor(y0), Math.ceil(y1), 4).filter((t) => t >= y0 && t <= y1) : niceTicks(y0, y1, 4);
  for (const t of yTicks) {
    ctx.beginPath(); ctx.moveTo(PAD.left, sy(t)); ctx.lineTo(width - PAD.right, sy(t)); ctx.stroke();
    ctx.fillText(label(logY ? 10 ** t : t), 2, sy(t) + 3);
  }
  for (const t of niceTicks(x0, x1, 4)) ctx.fillText(label(t), sx(t) - 8, height - 6);
  ctx.strokeStyle = '#4cc2ff';
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  pts.forEach((p, i) => (i ? ctx.lineTo(sx(xs[i]), sy(ys[i])) : ctx.moveTo(sx(xs[i]), sy(ys[i]))));
  ctx.stroke();
  if (pts.length === 1) {
    ctx.fillStyle = '#4cc2ff';
    ctx.beginPath(); ctx.arc(sx(xs[0]), sy(ys[0]), 3, 0, 2 * Math.PI); ctx.fill();
  }
  ctx.fillStyle = '#cfd6df';
  ctx.fillText(`${column}${logY ? ' (log)' : ''} vs step`, PAD.left + 4, PAD.top + 8);
}

/** A curve widget: a column picker and the canvas; `update(rows)` redraws. */
export function curveWidget(preferred = 'loss') {
  const select = h('select', { class: 'curve-column', title: 'column of log.jsonl' });
  const canvas = h('canvas', { class: 'curve' });
  let rows = [];
  const redraw = () => drawCurve(canvas, rows, select.value || preferred);
  select.addEventListener('change', redraw);
  const el = h('div', { class: 'curve-widget' }, select, canvas);
  return {
    el,
    update(newRows) {
      rows = newRows || [];
      const columns = logColumns(rows);
      select.style.display = columns.length ? '' : 'none';
      const current = select.value || preferred;
      if (select.options.length !== columns.length || [...select.options].some((o, i) => o.value !== columns[i])) {
        select.replaceChildren(...columns.map((c) => h('option', { value: c }, c)));
        select.value = columns.includes(current) ? current : columns[0] || '';
      }
      redraw();
    },
  };
}
