// The side panel of every run: run.json status, metrics, the loss curve and the config.

import { h, clear, fmt } from './dom.js';
import { curveWidget } from './plot.js';

function kv(rows) {
  return h('table', { class: 'kv' }, rows.filter(([, v]) => v !== undefined && v !== null && v !== '').map(([k, v]) => h('tr', {}, h('th', {}, k), h('td', {}, v))));
}

/** A count given as a number or as the list of names. */
function count(value) {
  return Array.isArray(value) ? value.length : value ?? 0;
}

function scalarRows(obj, skip) {
  return Object.entries(obj || {})
    .filter(([k, v]) => !skip.has(k) && (typeof v === 'number' || typeof v === 'string' || typeof v === 'boolean'))
    .map(([k, v]) => [k, typeof v === 'number' ? (Number.isInteger(v) ? String(v) : fmt(v, 4)) : String(v)]);
}

function captureMetrics(metrics, onView) {
  const parts = [];
  const means = h('table', { class: 'grid' }, h('tr', {}, h('th', {}, 'split'), h('th', {}, 'views'), h('th', {}, 'PSNR'), h('th', {}, 'SSIM'), h('th', {}, 'LPIPS')));
  for (const split of ['train', 'eval']) {
    const m = metrics[split]?.mean;
    if (!m) continue;
    means.append(h('tr', {}, h('td', {}, split), h('td', {}, m.n_views ?? '—'), h('td', {}, fmt(m.psnr)), h('td', {}, fmt(m.ssim, 4)), h('td', {}, fmt(m.lpips, 3))));
  }
  parts.push(means);
  parts.push(kv(scalarRows(metrics, new Set(['train', 'eval']))));
  const perView = h('table', { class: 'grid views-table' }, h('tr', {}, h('th', {}, 'view'), h('th', {}, 'split'), h('th', {}, 'PSNR'), h('th', {}, 'SSIM')));
  for (const split of ['train', 'eval']) {
    for (const [name, s] of Object.entries(metrics[split]?.views || {})) {
      perView.append(h('tr', { class: 'clickable', title: 'show this view', onclick: () => onView && onView(name) }, h('td', {}, name), h('td', {}, split), h('td', {}, fmt(s.psnr)), h('td', {}, fmt(s.ssim, 4))));
    }
  }
  parts.push(h('details', {}, h('summary', {}, 'per view'), perView));
  return parts;
}

function ctMetrics(metrics) {
  const rows = [];
  if (metrics.psnr_3d !== undefined) rows.push(['3D PSNR (dB)', fmt(metrics.psnr_3d)]);
  if (metrics.ssim_3d !== undefined) rows.push(['3D SSIM', fmt(metrics.ssim_3d, 4)]);
  if (Array.isArray(metrics.volume_shape)) rows.push(['volume (z, y, x)', metrics.volume_shape.join(' × ')]);
  if (Array.isArray(metrics.voxel_mm)) rows.push(['voxel (mm)', metrics.voxel_mm.map((v) => fmt(v, 3)).join(' × ')]);
  return [kv([...rows, ...scalarRows(metrics, new Set(['psnr_3d', 'ssim_3d']))])];
}

export class RunPanel {
  constructor(container, { onView } = {}) {
    this.onView = onView;
    this.status = h('div', { class: 'panel-block' });
    this.metrics = h('div', { class: 'panel-block' });
    this.curve = curveWidget('loss');
    this.config = h('pre', { class: 'config' });
    this.el = h('div', { class: 'run-panel' },
      h('h3', {}, 'Status'), this.status,
      h('h3', {}, 'Metrics'), this.metrics,
      h('h3', {}, 'Loss curve'), this.curve.el,
      h('details', { class: 'config-block' }, h('summary', {}, 'Config (config.json)'), this.config));
    clear(container).append(this.el);
  }

  update(state) {
    const run = state.run || {};
    const progress = run.total_steps ? `${run.step ?? 0} / ${run.total_steps}` : run.step;
    clear(this.status).append(
      h('div', { class: `status status-${state.status}`, id: 'run-status' }, state.status),
      kv([
        ['kind', state.kind], ['path', state.path], ['step', progress], ['method', run.method], ['device', run.device],
        ['views', run.train_views !== undefined ? `${count(run.train_views)} train, ${count(run.eval_views)} eval` : run.n_views],
        ['created', run.created], ['updated', run.updated], ['error', run.error],
      ]),
    );
    clear(this.metrics);
    if (!state.metrics) this.metrics.append(h('p', { class: 'muted' }, state.status === 'running' ? 'written when the run completes' : 'no metrics.json'));
    else this.metrics.append(...(state.kind === 'capture' ? captureMetrics(state.metrics, this.onView) : ctMetrics(state.metrics)));
    this.curve.update(state.log);
    this.config.textContent = state.config ? JSON.stringify(state.config, null, 2) : 'no config.json';
  }
}
