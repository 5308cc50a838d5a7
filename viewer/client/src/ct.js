// CT runs: the reconstruction in niivue (axial / coronal / sagittal planes and a 3D render),
// window/level presets in Hounsfield units, thick-slab MIP, the reference or the difference
// beside it with linked cursors, and the scan geometry in 3D.
//
// The server converts attenuation to HU (metrics.json's mu_water_per_mm) and sends int16 NIfTI.

import { MULTIPLANAR_TYPE, Niivue, SHOW_RENDER, SLICE_TYPE } from '@niivue/niivue';
import { h, clear } from './dom.js';
import { ScanGeometryView } from './scan3d.js';
import { hooks } from './testhooks.js';

/** Window presets: [width, level] in HU. */
export const PRESETS = {
  lung: [1500, -600],
  soft: [400, 40],
  bone: [2500, 480],
  brain: [80, 40],
  liver: [150, 90],
};
const PRESET_NAMES = { lung: 'Lung', soft: 'Soft tissue', bone: 'Bone', brain: 'Brain', liver: 'Liver' };
const LAYOUTS = {
  mpr: ['Planes + 3D', SLICE_TYPE.MULTIPLANAR],
  axial: ['Axial', SLICE_TYPE.AXIAL],
  coronal: ['Coronal', SLICE_TYPE.CORONAL],
  sagittal: ['Sagittal', SLICE_TYPE.SAGITTAL],
  render: ['3D', SLICE_TYPE.RENDER],
};
const DIFF_WINDOW_HU = 200;
/** Diverging map for the difference: cyan-blue below zero, black at zero, orange-red above. */
const DIFF_COLORMAP = { R: [90, 20, 0, 200, 255], G: [200, 90, 0, 70, 210], B: [255, 200, 0, 20, 120], A: [255, 255, 255, 255, 255], I: [0, 64, 128, 192, 255] };

function makeNiivue(fixedSize) {
  const nv = new Niivue({
    backColor: [0.05, 0.06, 0.08, 1],
    show3Dcrosshair: true,
    crosshairColor: [1, 0.8, 0.2, 0.9],
    crosshairWidth: 0.5, // voxels (niivue's unit): thin, yet visible on coarse volumes
    isRadiologicalConvention: true,
    multiplanarShowRender: SHOW_RENDER.ALWAYS,
    multiplanarLayout: MULTIPLANAR_TYPE.GRID,
    isOrientationTextVisible: true,
    isColorbar: false,
    forceDevicePixelRatio: fixedSize ? 1 : 0,
    logLevel: 'error',
  });
  nv.addColormap('recon_difference', DIFF_COLORMAP);
  return nv;
}

export class CTView {
  constructor(stage, state, { params }) {
    this.state = state;
    this.fixedSize = Number(params.get('size')) || null;
    this.preset = params.get('preset') in PRESETS ? params.get('preset') : 'soft';
    [this.width, this.level] = PRESETS[this.preset];
    this.layout = params.get('layout') in LAYOUTS ? params.get('layout') : 'mpr';
    this.mip = params.get('mip') === '1';
    this.slabMm = Number(params.get('slab')) || 10;
    this.right = state.ct?.reference ? (params.get('right') || 'reference') : 'none';

    this.presetButtons = Object.keys(PRESETS).map((p) => h('button', { class: 'toggle', dataset: { preset: p }, title: `W ${PRESETS[p][0]} / L ${PRESETS[p][1]} HU`, onclick: () => this.setWindow(...PRESETS[p], p) }, PRESET_NAMES[p]));
    this.widthInput = h('input', { type: 'number', id: 'window-width', step: '10', min: '1', onchange: () => this.setWindow(Number(this.widthInput.value), this.level, null) });
    this.levelInput = h('input', { type: 'number', id: 'window-level', step: '10', onchange: () => this.setWindow(this.width, Number(this.levelInput.value), null) });
    this.layoutSelect = h('select', { id: 'layout', onchange: () => this.setLayout(this.layoutSelect.value) }, Object.entries(LAYOUTS).map(([k, [name]]) => h('option', { value: k, selected: k === this.layout }, name)));
    this.mipBox = h('input', { type: 'checkbox', id: 'mip', checked: this.mip, onchange: () => this.setMip(this.mipBox.checked, this.slabMm) });
    this.slabInput = h('input', { type: 'number', id: 'slab-mm', min: '0', step: '1', value: String(this.slabMm), onchange: () => this.setMip(this.mip, Number(this.slabInput.value)) });
    this.rightSelect = h('select', { id: 'right', onchange: () => this.setRight(this.rightSelect.value) },
      h('option', { value: 'reference', disabled: !state.ct?.reference }, 'reference'), h('option', { value: 'difference', disabled: !state.ct?.reference }, 'difference (recon − reference)'), h('option', { value: 'none' }, 'nothing'));
    this.rightSelect.value = this.right;
    const toolbar = h('div', { class: 'toolbar' },
      h('span', { class: 'group' }, ...this.presetButtons),
      h('label', {}, 'W ', this.widthInput), h('label', {}, 'L ', this.levelInput), h('span', { class: 'unit' }, 'HU'),
      h('label', {}, 'view ', this.layoutSelect),
      h('label', { title: 'thick-slab maximum intensity projection in the chosen plane' }, this.mipBox, ' MIP, slab ', this.slabInput, ' mm'),
      h('label', {}, 'beside: ', this.rightSelect));
    this.paneLeft = this.makePane('reconstruction');
    this.paneRight = this.makePane('reference');
    this.panesEl = h('div', { class: `panes two${this.fixedSize ? ' fixed' : ''}` }, this.paneLeft.el, this.paneRight.el);
    this.readout = h('div', { class: 'readout', id: 'ct-readout' }, 'click or drag in a plane to move the cursor');
    this.scanEl = h('div', { class: 'scan-block' });
    this.el = h('div', { class: 'ct' }, toolbar, this.panesEl, this.readout, h('h3', {}, 'Scan geometry'), this.scanEl);
    clear(stage).append(this.el);

    this.nvLeft = makeNiivue(this.fixedSize);
    this.nvRight = makeNiivue(this.fixedSize);
    hooks.mode = 'ct';
    hooks.busy = () => false;
    hooks.api = { window: () => [this.width, this.level], layout: () => this.layout, mip: () => [this.mip, this.slabMm], right: () => this.right };
    this.ready = hooks.track(this.start());
  }

  makePane(title) {
    const canvas = h('canvas', { class: 'nv-canvas' });
    const box = h('div', { class: 'nv-box' }, canvas);
    if (this.fixedSize) Object.assign(box.style, { width: `${this.fixedSize}px`, height: `${this.fixedSize}px` });
    const label = h('div', { class: 'pane-title' }, title);
    const note = h('div', { class: 'pane-note' });
    return { canvas, label, note, el: h('div', { class: 'pane nv-pane' }, box, label, note) };
  }

  async start() {
    hooks.mark('ct:start');
    await Promise.all([this.nvLeft.attachToCanvas(this.paneLeft.canvas), this.nvRight.attachToCanvas(this.paneRight.canvas)]);
    hooks.mark('ct:attached');
    if (this.disposed) return;
    const sync = { '2d': true, '3d': true, crosshair: true, sliceType: true, zoomPan: true };
    this.nvLeft.broadcastTo([this.nvRight], sync);
    this.nvRight.broadcastTo([this.nvLeft], sync);
    this.nvLeft.onLocationChange = (loc) => this.showLocation(loc, 'left');
    this.nvRight.onLocationChange = (loc) => this.showLocation(loc, 'right');
    this.updateControls();
    if (this.state.ct?.drawing) {
      this.scan = new ScanGeometryView(this.scanEl, this.state.ct.drawing, { fixedSize: this.fixedSize });
    } else {
      this.scanEl.append(h('p', { class: 'muted' }, 'no geometry.json: scan geometry not drawn'));
    }
    await this.loadAll();
  }

  volumeUrl(which) {
    const id = this.state.id;
    if (this.mip && this.layout in { axial: 1, coronal: 1, sagittal: 1 } && which !== 'difference') return `/api/run/${id}/ct/mip/${this.layout}/${this.slabMm}/${which}.nii`;
    return `/api/run/${id}/ct/${which}.nii`;
  }

  windowFor(which) {
    if (which === 'difference') return [-DIFF_WINDOW_HU, DIFF_WINDOW_HU];
    return [this.level - this.width / 2, this.level + this.width / 2];
  }

  async loadInto(nv, pane, which) {
    const ct = this.state.ct || {};
    const present = which === 'volume' ? ct.volume : which === 'none' ? null : ct.reference;
    if (!present) {
      nv.volumes.slice().forEach((v) => nv.removeVolume(v));
      pane.stamp = null;
      pane.note.textContent = which === 'none' ? '' : `no ${which === 'volume' ? 'volume' : 'reference'} to show`;
      nv.drawScene();
      return false;
    }
    const url = this.volumeUrl(which);
    const stamp = `${url}@${ct.volume?.mtime}@${ct.reference?.mtime}`;
    if (pane.stamp === stamp) return true;
    const [calMin, calMax] = this.windowFor(which);
    const crosshair = nv.volumes.length ? [...nv.scene.crosshairPos] : null;
    pane.note.textContent = 'loading…';
    try {
      await nv.loadVolumes([{ url, name: `${which}.nii`, colormap: which === 'difference' ? 'recon_difference' : 'gray', cal_min: calMin, cal_max: calMax, trustCalMinMax: true }]);
    } catch (err) {
      if (this.disposed) return false;
      pane.note.textContent = `${which} could not be loaded: ${err.message || err}`;
      hooks.errors.push(String(err));
      return false;
    }
    if (this.disposed) return false;
    this.applyWindow(nv, which);
    if (crosshair) {
      nv.scene.crosshairPos = crosshair;
      nv.drawScene();
    }
    pane.stamp = stamp;
    const mipNote = this.mip && which !== 'difference' && url.includes('/mip/') ? ` — ${this.mipLabel(nv)}` : '';
    pane.note.textContent = `${which === 'volume' ? 'reconstruction' : which} in HU${mipNote}`;
    return true;
  }

  /** Load what the panes show: the reconstruction first (the first frame), then the right
   * pane. niivue prepares each volume on the GPU (textures, a gradient volume for the 3D
   * render): quick on a GPU, seconds per 256^3 volume on a CPU renderer, so one after the other. */
  /** "MIP 10 mm (3 slices = 20.0 mm, axial)": the slab as the server computes it (mip_slices). */
  mipLabel(nv) {
    const pix = nv.volumes[0]?.hdr?.pixDims;
    const voxel = pix ? pix[{ axial: 3, coronal: 2, sagittal: 1 }[this.layout]] : null;
    if (!voxel) return `MIP ${this.slabMm} mm (${this.layout})`;
    let n = Math.max(1, Math.floor(this.slabMm / voxel + 0.5));
    n += 1 - (n % 2);
    return `MIP ${this.slabMm} mm (${n} slice${n > 1 ? 's' : ''} = ${(n * voxel).toFixed(1)} mm, ${this.layout})`;
  }

  async loadAll() {
    if (this.disposed) return;
    this.paneLeft.label.textContent = `${this.state.name}: reconstruction`;
    this.paneRight.label.textContent = this.right === 'none' ? '' : `${this.state.name}: ${this.right}`;
    this.paneRight.el.style.display = this.right === 'none' ? 'none' : '';
    this.panesEl.classList.toggle('two', this.right !== 'none');
    if (this.right !== 'none' && !this.paneRight.stamp) this.paneRight.note.textContent = 'waiting for the reconstruction…';
    const ok = await this.loadInto(this.nvLeft, this.paneLeft, 'volume');
    if (this.disposed) return;
    this.setLayout(this.layout, false);
    if (ok) await new Promise((r) => requestAnimationFrame(() => r()));
    hooks.mark('ct:volume-shown');
    hooks.frameDrawn(ok);
    await this.loadInto(this.nvRight, this.paneRight, this.right);
    if (this.disposed) return;
    this.setLayout(this.layout, false);
    hooks.mark('ct:loaded');
    hooks.frameDrawn(ok);
  }

  applyWindow(nv, which) {
    const vol = nv.volumes[0];
    if (!vol) return;
    [vol.cal_min, vol.cal_max] = this.windowFor(which);
    nv.updateGLVolume();
  }

  setWindow(width, level, preset) {
    this.width = Math.max(1, width);
    this.level = level;
    this.preset = preset;
    this.applyWindow(this.nvLeft, 'volume');
    if (this.right === 'reference') this.applyWindow(this.nvRight, 'reference');
    this.updateControls();
    hooks.frameDrawn(true);
  }

  setLayout(layout, reload = true) {
    const changedPlane = this.layout !== layout;
    this.layout = layout;
    const singlePlane = layout in { axial: 1, coronal: 1, sagittal: 1 };
    if (reload && this.mip && !singlePlane) {
      this.mip = false; // a slab MIP is a projection in one plane: leaving the plane ends it
      this.updateControls();
      this.nvLeft.setSliceType(LAYOUTS[layout][1]);
      this.nvRight.setSliceType(LAYOUTS[layout][1]);
      return hooks.track(this.loadAll());
    }
    const type = LAYOUTS[layout][1];
    this.nvLeft.setSliceType(type);
    this.nvRight.setSliceType(type);
    this.updateControls();
    hooks.frameDrawn(true);
    if (reload && this.mip && changedPlane) return hooks.track(this.loadAll());
  }

  setMip(on, slabMm) {
    this.mip = on;
    this.slabMm = Math.max(0, Number.isFinite(slabMm) ? slabMm : 10);
    if (on && !(this.layout in { axial: 1, coronal: 1, sagittal: 1 })) this.layout = 'axial';
    this.updateControls();
    return hooks.track(this.loadAll());
  }

  setRight(which) {
    this.right = which;
    this.paneRight.stamp = null;
    return hooks.track(this.loadAll());
  }

  updateControls() {
    for (const b of this.presetButtons) b.classList.toggle('on', b.dataset.preset === this.preset);
    this.widthInput.value = String(Math.round(this.width));
    this.levelInput.value = String(Math.round(this.level));
    this.layoutSelect.value = this.layout;
    this.mipBox.checked = this.mip;
    this.slabInput.value = String(this.slabMm);
  }

  showLocation(loc, side) {
    const mm = loc.mm ? `(${[0, 1, 2].map((i) => loc.mm[i].toFixed(1)).join(', ')}) mm` : '';
    const value = (nv) => (nv.volumes[0] ? nv.volumes[0].getValue(...loc.vox) : null);
    const v = value(this.nvLeft);
    const r = this.right !== 'none' ? value(this.nvRight) : null;
    this.readout.textContent = `cursor ${mm} · reconstruction ${v !== null && v !== undefined ? Math.round(v) : '—'} HU${r !== null && r !== undefined ? ` · ${this.right} ${Math.round(r)} HU` : ''}`;
  }

  update(state) {
    this.state = state;
    return hooks.track(this.loadAll());
  }

  dispose() {
    this.disposed = true;
    this.scan?.dispose();
    for (const nv of [this.nvLeft, this.nvRight]) {
      try {
        nv.gl?.getExtension('WEBGL_lose_context')?.loseContext();
      } catch (_) { /* already gone */ }
    }
    this.el.remove();
  }
}
