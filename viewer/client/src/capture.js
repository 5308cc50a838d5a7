// Capture runs: the Gaussians rendered by Spark (WebGL2), the cameras as frustums with their
// photos, render · photo · error of a clicked camera, a points-only fallback, and a second run
// beside the first with the same (linked) camera.

import * as THREE from 'three';
import { OrbitControls } from 'three/addons/controls/OrbitControls.js';
import { SparkRenderer, SplatMesh, SplatFileType } from '@sparkjsdev/spark';
import { getBytes, versioned } from './api.js';
import { h, clear, fmt } from './dom.js';
import { buildFrustum, glCameraMatrix, hideOnly, highlight, lookAtPoint, sceneScale, viewFov, worldUp } from './frustums.js';
import { hooks } from './testhooks.js';

const FLY_MS = 350;
const DEFAULT_FOV = 50;
const BACKGROUND = 0x111418;

function srgbToLinear(c) {
  return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
}

/** Decode the server's points.bin: uint32 M, M*3 float32 positions, M*3 uint8 sRGB colours. */
function pointsFromBytes(buffer) {
  const m = new DataView(buffer).getUint32(0, true);
  const positions = new Float32Array(buffer, 4, m * 3);
  const srgb = new Uint8Array(buffer, 4 + m * 12, m * 3);
  const colours = new Float32Array(m * 3);
  for (let i = 0; i < m * 3; i++) colours[i] = srgbToLinear(srgb[i] / 255);
  const geometry = new THREE.BufferGeometry();
  geometry.setAttribute('position', new THREE.BufferAttribute(positions, 3));
  geometry.setAttribute('color', new THREE.BufferAttribute(colours, 3));
  return new THREE.Points(geometry, new THREE.PointsMaterial({ size: 2, sizeAttenuation: false, vertexColors: true }));
}

/** One run's 3D view: a canvas with its own WebGL renderer, Spark renderer and scene. */
class SplatPane {
  constructor(container, state, { requestRender, mode, shDegree, fixedSize }) {
    this.state = state;
    this.requestRender = requestRender;
    this.mode = mode;
    this.shDegree = shDegree;
    this.loadedSplat = null;
    this.sortedAfterLoad = false;
    this.canvas = h('canvas', { class: 'view-canvas', dataset: { run: String(state.id) } });
    this.title = h('div', { class: 'pane-title' });
    this.note = h('div', { class: 'pane-note' });
    this.el = h('div', { class: 'pane' }, this.canvas, this.title, this.note);
    if (fixedSize) Object.assign(this.canvas.style, { width: `${fixedSize}px`, height: `${fixedSize}px` });
    container.append(this.el);
    this.renderer = new THREE.WebGLRenderer({ canvas: this.canvas, antialias: false, preserveDrawingBuffer: true });
    this.renderer.setPixelRatio(fixedSize ? 1 : Math.min(window.devicePixelRatio || 1, 2));
    this.scene = new THREE.Scene();
    const bg = state.capture?.background;
    this.scene.background = new THREE.Color(BACKGROUND);
    if (Array.isArray(bg) && bg.length === 3) this.scene.background.setRGB(bg[0], bg[1], bg[2], THREE.SRGBColorSpace);
    this.spark = new SparkRenderer({
      renderer: this.renderer,
      preBlurAmount: 0.3, // recon's rasteriser adds 0.3 px^2 to the 2D covariance, like 3DGS
      onDirty: () => {
        if (this.mesh && this.mesh.isInitialized) this.sortedAfterLoad = true;
        this.requestRender();
      },
    });
    this.scene.add(this.spark);
    this.frustums = new THREE.Group();
    this.scene.add(this.frustums);
    this.setTitle();
  }

  get hasContent() {
    return this.mode === 'points' ? Boolean(this.points) : this.sortedAfterLoad;
  }

  setTitle() {
    const s = this.state.capture?.splat;
    const count = s ? `${s.n.toLocaleString('en')} Gaussians, SH degree ${s.sh_degree}` : 'no splat.ply';
    this.title.textContent = `${this.state.name} — ${count}`;
  }

  size() {
    const rect = this.canvas.getBoundingClientRect();
    return [Math.max(1, Math.round(rect.width)), Math.max(1, Math.round(rect.height))];
  }

  resize() {
    const [w, h_] = this.size();
    this.renderer.setSize(w, h_, false);
    return w / h_;
  }

  /** Load (or reload when splat.ply changed) what the current mode shows. */
  async load() {
    const splat = this.state.capture?.splat;
    this.setTitle();
    if (!splat) return;
    const key = `${this.mode}:${splat.mtime}`;
    if (this.loadedSplat === key) return;
    this.loadedSplat = key;
    if (this.mode === 'points') await this.loadPoints(splat);
    else await this.loadSplats(splat);
    this.requestRender();
  }

  async loadSplats(splat) {
    this.clearModel();
    this.note.textContent = `loading ${(splat.bytes / 1e6).toFixed(1)} MB…`;
    const mesh = new SplatMesh({ url: versioned(splat), fileType: SplatFileType.PLY, fileName: 'splat.ply' });
    this.mesh = mesh;
    this.sortedAfterLoad = false;
    try {
      await hooks.track(mesh.initialized);
    } catch (err) {
      this.note.textContent = `splat.ply could not be loaded: ${err.message || err}`;
      hooks.errors.push(String(err));
      return;
    }
    if (this.mesh !== mesh) return mesh.dispose();
    hooks.mark('capture:splats-loaded');
    mesh.maxSh = this.shDegree ?? 3;
    this.scene.add(mesh);
    this.note.textContent = '';
  }

  async loadPoints(splat) {
    this.clearModel();
    this.note.textContent = 'loading points…';
    try {
      const bytes = await hooks.track(getBytes(`/api/run/${this.state.id}/points.bin?v=${splat.mtime}`));
      this.points = pointsFromBytes(bytes);
      this.scene.add(this.points);
      const shown = this.points.geometry.getAttribute('position').count;
      this.note.textContent = `points only: ${shown.toLocaleString('en')} of ${splat.n.toLocaleString('en')} centres`;
    } catch (err) {
      this.note.textContent = `points could not be loaded: ${err.message || err}`;
      hooks.errors.push(String(err));
    }
  }

  clearModel() {
    if (this.mesh) {
      this.scene.remove(this.mesh);
      this.mesh.dispose();
      this.mesh = null;
    }
    if (this.points) {
      this.scene.remove(this.points);
      this.points.geometry.dispose();
      this.points.material.dispose();
      this.points = null;
    }
  }

  setMode(mode) {
    this.mode = mode;
    return this.load();
  }

  setShDegree(degree) {
    this.shDegree = degree;
    if (this.mesh) this.mesh.maxSh = degree;
    this.requestRender();
  }

  setFrustums(views, depth, visible) {
    for (const f of [...this.frustums.children]) {
      this.frustums.remove(f);
      f.traverse((o) => { o.geometry?.dispose(); o.material?.map?.dispose(); o.material?.dispose(); });
    }
    for (const view of views.filter((v) => v.c2w)) this.frustums.add(buildFrustum(view, depth, this.requestRender));
    this.frustums.visible = visible;
  }

  pick(event, camera) {
    const rect = this.canvas.getBoundingClientRect();
    const ndc = new THREE.Vector2(((event.clientX - rect.left) / rect.width) * 2 - 1, -((event.clientY - rect.top) / rect.height) * 2 + 1);
    const ray = new THREE.Raycaster();
    ray.setFromCamera(ndc, camera);
    const planes = this.frustums.visible ? this.frustums.children.filter((f) => f.visible).map((f) => f.userData.plane) : [];
    const hit = ray.intersectObjects(planes, false)[0];
    return hit ? hit.object.userData.viewName : null;
  }

  render(camera) {
    this.renderer.render(this.scene, camera);
  }

  /** Remove the pane now; free the GPU once Spark's asynchronous sort (a GPU readback) has
   * finished, since losing the context under it rejects Spark's internal promise. */
  dispose() {
    this.el.remove();
    const free = () => {
      this.clearModel();
      this.spark.dispose?.();
      this.renderer.dispose();
      this.renderer.forceContextLoss();
    };
    const whenIdle = (tries) => (this.spark.sorting && tries > 0 ? setTimeout(() => whenIdle(tries - 1), 50) : free());
    whenIdle(200);
  }
}

/** The capture page: toolbar, one or two panes, the camera strip and the comparison panel. */
export class CaptureView {
  constructor(stage, state, { beside, besideChoices, onBeside, params }) {
    this.state = state;
    this.params = params;
    this.fixedSize = Number(params.get('size')) || null;
    const splat = state.capture?.splat;
    this.mode = params.get('mode') || (splat && splat.n > state.capture.max_splats ? 'points' : 'splats');
    this.shDegree = splat ? splat.sh_degree : 3;
    this.showFrustums = params.get('frustums') !== '0';
    this.selected = null;
    this.dirty = true;
    this.disposed = false;

    this.modeButtons = ['splats', 'points'].map((m) => h('button', { class: 'toggle', dataset: { mode: m }, onclick: () => this.setMode(m) }, m === 'splats' ? 'Splats' : 'Points'));
    this.shSelect = h('select', { id: 'sh-degree', title: 'spherical-harmonic degree rendered', onchange: () => this.setShDegree(Number(this.shSelect.value)) });
    const frustumBox = h('input', { type: 'checkbox', id: 'show-frustums', checked: this.showFrustums, onchange: () => { this.showFrustums = frustumBox.checked; this.panes.forEach((p) => (p.frustums.visible = this.showFrustums)); this.requestRender(); } });
    this.besideSelect = h('select', { id: 'beside', title: 'show another capture run beside this one, same camera', onchange: () => onBeside(this.besideSelect.value === '' ? null : Number(this.besideSelect.value)) },
      h('option', { value: '' }, '—'), besideChoices.map((r) => h('option', { value: String(r.id), selected: beside && beside.id === r.id }, r.name)));
    const toolbar = h('div', { class: 'toolbar' },
      h('span', { class: 'group' }, ...this.modeButtons),
      h('label', {}, 'SH degree ', this.shSelect),
      h('label', {}, frustumBox, ' cameras'),
      h('button', { id: 'reset-view', onclick: () => this.resetView(true) }, 'Reset view'),
      besideChoices.length ? h('label', {}, 'beside: ', this.besideSelect) : null,
      h('span', { class: 'hint' }, 'drag: orbit · right-drag: pan · wheel: zoom · click a camera or ←/→'));
    this.panesEl = h('div', { class: `panes${beside ? ' two' : ''}${this.fixedSize ? ' fixed' : ''}` });
    this.strip = h('div', { class: 'view-strip', id: 'view-strip' });
    this.comparePanel = h('div', { class: 'compare-panel', id: 'compare-panel' });
    this.el = h('div', { class: 'capture' }, toolbar, this.panesEl, this.strip, this.comparePanel);
    clear(stage).append(this.el);

    this.camera = new THREE.PerspectiveCamera(DEFAULT_FOV, 1, 0.01, 1000);
    const views = state.capture?.views || [];
    this.camera.up.copy(worldUp(views));
    const options = { requestRender: () => this.requestRender(), mode: this.mode, shDegree: this.shDegree, fixedSize: this.fixedSize };
    this.panes = [new SplatPane(this.panesEl, state, options)];
    if (beside) this.panes.push(new SplatPane(this.panesEl, beside, options));
    this.controls = this.panes.map((pane) => this.makeControls(pane));
    this.onKey = (e) => this.key(e);
    window.addEventListener('keydown', this.onKey);
    this.resizeObserver = new ResizeObserver(() => this.requestRender());
    this.resizeObserver.observe(this.panesEl);

    this.updateToolbar();
    this.rebuildScene(true);
    Promise.all(this.panes.map((pane) => pane.load())).then(() => this.frameModelIfUnposed());
    this.loop = this.loop.bind(this);
    requestAnimationFrame(this.loop);
    hooks.mode = 'capture';
    // idle = nothing to draw, no camera flight, and Spark has no depth sort pending or running
    hooks.busy = () => !this.disposed && (this.dirty || Boolean(this.flight) || this.panes.some((p) => p.spark.sorting || p.spark.sortDirty));
    hooks.api = {
      projectView: (name, paneIndex = 0) => this.projectView(name, paneIndex),
      selected: () => this.selected,
      cameraPose: () => ({ position: this.camera.position.toArray(), quaternion: this.camera.quaternion.toArray(), fov: this.camera.fov }),
    };
  }

  makeControls(pane) {
    const controls = new OrbitControls(this.camera, pane.canvas);
    controls.enableDamping = false;
    controls.addEventListener('start', () => this.panes.forEach((p) => hideOnly(p.frustums, null)));
    controls.addEventListener('change', () => {
      for (const other of this.controls || []) if (other !== controls) other.target.copy(controls.target);
      this.requestRender();
    });
    let down = null;
    pane.canvas.addEventListener('pointerdown', (e) => (down = [e.clientX, e.clientY]));
    pane.canvas.addEventListener('pointerup', (e) => {
      if (!down || Math.hypot(e.clientX - down[0], e.clientY - down[1]) > 4 || e.button !== 0) return;
      const name = pane.pick(e, this.camera);
      if (name) this.selectView(name);
    });
    return controls;
  }

  requestRender() {
    this.dirty = true;
  }

  loop() {
    if (this.disposed) return;
    requestAnimationFrame(this.loop);
    if (this.flight) this.stepFlight();
    if (!this.dirty) return;
    this.dirty = false;
    const aspect = this.panes.map((p) => p.resize())[0];
    if (Math.abs(this.camera.aspect - aspect) > 1e-6) {
      this.camera.aspect = aspect;
      this.camera.updateProjectionMatrix();
    }
    this.camera.updateMatrixWorld();
    for (const pane of this.panes) pane.render(this.camera);
    hooks.frameDrawn(this.panes.every((p) => p.hasContent));
  }

  /** Frustums, camera strip and (first time) the starting view, from the current state. */
  rebuildScene(first) {
    const views = this.state.capture?.views || [];
    this.target = lookAtPoint(views) || new THREE.Vector3();
    this.scale = sceneScale(views, this.target);
    const depth = 0.12 * this.scale;
    this.panes[0].setFrustums(views, depth, this.showFrustums);
    for (const pane of this.panes.slice(1)) pane.setFrustums(pane.state.capture?.views || [], depth, this.showFrustums);
    this.buildStrip();
    if (first) this.resetView(false);
  }

  resetView(animate) {
    const views = (this.state.capture?.views || []).filter((v) => v.c2w);
    const first = views.find((v) => v.split === 'train') || views[0];
    let position;
    if (first) {
      // behind and above the first training camera, looking at what the cameras look at
      const m = glCameraMatrix(first.c2w);
      const centre = new THREE.Vector3().setFromMatrixPosition(m);
      position = this.target.clone().add(centre.sub(this.target).multiplyScalar(1.25)).add(this.camera.up.clone().multiplyScalar(0.35 * this.scale));
    } else if (this.panes[0].mesh || this.panes[0].points) {
      this.selected = null;
      this.renderCompare();
      return this.frameModelIfUnposed();
    } else {
      position = this.target.clone().add(new THREE.Vector3(0, 0.4, 1).normalize().multiplyScalar(3));
    }
    const probe = new THREE.PerspectiveCamera();
    probe.up.copy(this.camera.up);
    probe.position.copy(position);
    probe.lookAt(this.target);
    this.selected = null;
    this.panes.forEach((p) => highlight(p.frustums, null));
    this.markStrip();
    this.renderCompare();
    this.flyTo(position, probe.quaternion, DEFAULT_FOV, this.target.clone(), animate);
  }

  /** Without posed cameras, frame the loaded model's bounding box instead. */
  frameModelIfUnposed() {
    if ((this.state.capture?.views || []).some((v) => v.c2w)) return;
    const pane = this.panes[0];
    let box = null;
    if (pane.mesh) box = pane.mesh.getBoundingBox(true);
    else if (pane.points) box = new THREE.Box3().setFromObject(pane.points);
    if (!box || box.isEmpty()) return;
    this.target = box.getCenter(new THREE.Vector3());
    this.scale = box.getSize(new THREE.Vector3()).length();
    const position = this.target.clone().add(new THREE.Vector3(0.3, 0.4, 1).normalize().multiplyScalar(1.1 * this.scale));
    const probe = new THREE.PerspectiveCamera();
    probe.up.copy(this.camera.up);
    probe.position.copy(position);
    probe.lookAt(this.target);
    this.flyTo(position, probe.quaternion, DEFAULT_FOV, this.target.clone(), false);
  }

  flyTo(position, quaternion, fov, target, animate, atView = null) {
    this.controls.forEach((c) => (c.enabled = false));
    this.panes.forEach((p) => hideOnly(p.frustums, null));
    this.flight = {
      start: performance.now(), duration: animate ? FLY_MS : 0,
      from: { position: this.camera.position.clone(), quaternion: this.camera.quaternion.clone(), fov: this.camera.fov },
      to: { position: position.clone(), quaternion: quaternion.clone(), fov }, target, atView,
    };
    this.stepFlight();
  }

  stepFlight() {
    const f = this.flight;
    const t = f.duration ? Math.min(1, (performance.now() - f.start) / f.duration) : 1;
    const s = t * t * (3 - 2 * t);
    this.camera.position.lerpVectors(f.from.position, f.to.position, s);
    this.camera.quaternion.slerpQuaternions(f.from.quaternion, f.to.quaternion, s);
    this.camera.fov = f.from.fov + (f.to.fov - f.from.fov) * s;
    this.camera.updateProjectionMatrix();
    this.requestRender();
    if (t >= 1) {
      this.flight = null;
      if (f.atView) this.panes.forEach((p) => hideOnly(p.frustums, f.atView));
      for (const c of this.controls) {
        c.target.copy(f.target);
        c.enabled = true;
      }
    }
  }

  /** Move to a camera of cameras.json and show its render · photo · error. */
  selectView(name) {
    const view = (this.state.capture?.views || []).find((v) => v.name === name);
    if (!view) return;
    this.selected = name;
    this.panes.forEach((p) => highlight(p.frustums, name));
    this.markStrip();
    this.renderCompare();
    if (!view.c2w) return this.requestRender();
    const m = glCameraMatrix(view.c2w);
    const position = new THREE.Vector3();
    const quaternion = new THREE.Quaternion();
    m.decompose(position, quaternion, new THREE.Vector3());
    const forward = new THREE.Vector3(0, 0, -1).applyQuaternion(quaternion);
    const distance = Math.max(0.1 * this.scale, this.target.clone().sub(position).dot(forward));
    this.flyTo(position, quaternion, viewFov(view), position.clone().add(forward.multiplyScalar(distance)), true, name);
  }

  key(e) {
    if (e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement) return;
    if (e.key !== 'ArrowLeft' && e.key !== 'ArrowRight') return;
    const views = this.state.capture?.views || [];
    if (!views.length) return;
    const i = views.findIndex((v) => v.name === this.selected);
    const next = e.key === 'ArrowRight' ? (i + 1) % views.length : (i - 1 + views.length) % views.length;
    this.selectView(views[next].name);
  }

  buildStrip() {
    const views = this.state.capture?.views || [];
    clear(this.strip);
    if (!views.length) this.strip.append(h('span', { class: 'muted' }, 'no cameras'));
    for (const view of views) {
      const thumb = view.photo || view.render;
      this.strip.append(h('button', { class: `view-chip split-${view.split}`, dataset: { view: view.name }, title: `${view.name} (${view.split})`, onclick: () => this.selectView(view.name) },
        thumb ? h('img', { src: thumb, alt: '', loading: 'lazy' }) : h('span', { class: 'noimg' }, '?'),
        h('span', { class: 'chip-name' }, view.name),
        h('span', { class: 'chip-score' }, view.scores ? `${fmt(view.scores.psnr)} dB` : view.split)));
    }
    this.markStrip();
  }

  markStrip() {
    for (const chip of this.strip.querySelectorAll('.view-chip')) chip.classList.toggle('selected', chip.dataset.view === this.selected);
  }

  renderCompare() {
    clear(this.comparePanel);
    if (!this.selected) {
      this.comparePanel.append(h('p', { class: 'muted' }, 'click a camera (frustum or thumbnail) to see render · photo · error'));
      return;
    }
    for (const pane of this.panes) {
      const view = (pane.state.capture?.views || []).find((v) => v.name === this.selected);
      const scores = view?.scores;
      const header = h('div', { class: 'compare-head' },
        h('b', {}, pane.state.name), ' · ', this.selected, ` (${view?.split ?? 'not in this run'})`,
        scores ? h('span', { class: 'scores' }, ` PSNR ${fmt(scores.psnr)} dB · SSIM ${fmt(scores.ssim, 4)}${scores.lpips !== undefined ? ` · LPIPS ${fmt(scores.lpips, 3)}` : ''}`) : h('span', { class: 'muted' }, ' no scores'));
      let body;
      if (view?.compare) body = h('img', { class: 'compare-img', src: view.compare, alt: 'render · photo · error' });
      else if (view?.render || view?.photo) body = h('div', { class: 'compare-pair' }, view.render ? h('img', { src: view.render, alt: 'render' }) : null, view.photo ? h('img', { src: view.photo, alt: 'photo' }) : null);
      else body = h('p', { class: 'muted' }, 'no render or photo for this view');
      const labels = view?.compare ? h('div', { class: 'compare-labels' }, h('span', {}, 'render'), h('span', {}, 'photo'), h('span', {}, '|error|')) : null;
      this.comparePanel.append(h('div', { class: 'compare-run' }, header, h('div', { class: 'compare-body' }, labels, body)));
    }
  }

  updateToolbar() {
    for (const b of this.modeButtons) b.classList.toggle('on', b.dataset.mode === this.mode);
    const max = this.state.capture?.splat?.sh_degree ?? 0;
    clear(this.shSelect).append(...Array.from({ length: max + 1 }, (_, d) => h('option', { value: String(d), selected: d === this.shDegree }, String(d))));
    this.shSelect.disabled = this.mode === 'points';
  }

  setMode(mode) {
    this.mode = mode;
    this.updateToolbar();
    return Promise.all(this.panes.map((p) => p.setMode(mode)));
  }

  setShDegree(degree) {
    this.shDegree = degree;
    this.panes.forEach((p) => p.setShDegree(degree));
  }

  /** Canvas pixel of a view's image-plane centre (tests click there to pick a frustum). */
  projectView(name, paneIndex) {
    const pane = this.panes[paneIndex];
    const frustum = pane.frustums.children.find((f) => f.userData.view.name === name);
    if (!frustum) return null;
    const p = frustum.userData.centre.clone().project(this.camera);
    const rect = pane.canvas.getBoundingClientRect();
    return { x: rect.left + ((p.x + 1) / 2) * rect.width, y: rect.top + ((1 - p.y) / 2) * rect.height, visible: Math.abs(p.x) < 1 && Math.abs(p.y) < 1 && p.z < 1 };
  }

  /** New state from polling: reload what changed, keep the camera. */
  update(state, besideState) {
    const camerasChanged = JSON.stringify((state.capture?.views || []).map((v) => v.name)) !== JSON.stringify((this.state.capture?.views || []).map((v) => v.name));
    this.state = state;
    this.panes[0].state = state;
    if (besideState && this.panes[1]) this.panes[1].state = besideState;
    if (camerasChanged) this.rebuildScene(false);
    else {
      this.buildStrip();
      this.renderCompare();
    }
    this.updateToolbar();
    for (const pane of this.panes) pane.load();
  }

  dispose() {
    this.disposed = true;
    window.removeEventListener('keydown', this.onKey);
    this.resizeObserver.disconnect();
    this.controls.forEach((c) => c.dispose());
    this.panes.forEach((p) => p.dispose());
    this.el.remove();
  }
}
