// The CT scan geometry in 3D (three.js): the volume's box, the source path with a dot per view,
// every detector faintly, and one chosen view's detector with its ray cone. World millimetres,
// z (the rotation axis) up, as in recon.geometry.ct and the server's scan_drawing().

import * as THREE from 'three';
import { OrbitControls } from 'three/addons/controls/OrbitControls.js';
import { h } from './dom.js';

const BOX_COLOUR = 0x9aa4b2;
const SOURCE_COLOUR = 0xffb703;
const DETECTOR_COLOUR = 0x4cc2ff;
const CHOSEN_COLOUR = 0xff5d8f;

function v3(p) {
  return new THREE.Vector3(p[0], p[1], p[2]);
}

function lineSegments(points, colour, opacity = 1) {
  const material = new THREE.LineBasicMaterial({ color: colour, transparent: opacity < 1, opacity });
  return new THREE.LineSegments(new THREE.BufferGeometry().setFromPoints(points), material);
}

function boxEdges(lo, hi) {
  const c = [];
  for (const x of [lo[0], hi[0]]) for (const y of [lo[1], hi[1]]) for (const z of [lo[2], hi[2]]) c.push(new THREE.Vector3(x, y, z));
  const pairs = [[0, 1], [2, 3], [4, 5], [6, 7], [0, 2], [1, 3], [4, 6], [5, 7], [0, 4], [1, 5], [2, 6], [3, 7]];
  return pairs.flatMap(([a, b]) => [c[a], c[b]]);
}

export class ScanGeometryView {
  /** `drawing` is the server's scan_drawing(geometry.json); `fixedSize` pins the canvas (tests). */
  constructor(container, drawing, { fixedSize } = {}) {
    this.drawing = drawing;
    this.canvas = h('canvas', { class: 'scan-canvas' });
    if (fixedSize) Object.assign(this.canvas.style, { width: `${fixedSize}px`, height: `${fixedSize}px` });
    const n = drawing.n_views;
    this.slider = h('input', { type: 'range', min: '0', max: String(Math.max(0, n - 1)), value: '0', id: 'scan-view', oninput: () => this.choose(Number(this.slider.value)) });
    this.label = h('span', { class: 'scan-label' });
    this.el = h('div', { class: 'scan' }, this.canvas,
      h('div', { class: 'scan-controls' }, h('label', {}, 'view ', this.slider), this.label),
      h('div', { class: 'legend' }, h('span', { style: { color: '#ffb703' } }, '● source path'), ' ', h('span', { style: { color: '#4cc2ff' } }, '▭ detectors'), ' ', h('span', { style: { color: '#ff5d8f' } }, '▭ chosen view and its rays'), ' ', h('span', { style: { color: '#9aa4b2' } }, '□ volume')));
    container.append(this.el);

    this.renderer = new THREE.WebGLRenderer({ canvas: this.canvas, antialias: true, preserveDrawingBuffer: true });
    this.renderer.setPixelRatio(fixedSize ? 1 : Math.min(window.devicePixelRatio || 1, 2));
    this.scene = new THREE.Scene();
    this.scene.background = new THREE.Color(0x0d1014);
    const [lo, hi] = drawing.volume_box;
    this.scene.add(lineSegments(boxEdges(lo, hi), BOX_COLOUR));
    const size = Math.max(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]);
    const axes = new THREE.AxesHelper(size * 0.6);
    this.scene.add(axes);

    let reach = size;
    if (drawing.sources) {
      const sources = drawing.sources.map(v3);
      const dots = new THREE.Points(new THREE.BufferGeometry().setFromPoints(sources), new THREE.PointsMaterial({ color: SOURCE_COLOUR, size: 5, sizeAttenuation: false }));
      this.scene.add(dots);
      const radius = Math.max(...sources.map((s) => Math.hypot(s.x, s.y)));
      const circle = [];
      for (let i = 0; i <= 128; i++) {
        const a = (2 * Math.PI * i) / 128;
        circle.push(new THREE.Vector3(radius * Math.cos(a), radius * Math.sin(a), sources[0].z));
      }
      this.scene.add(new THREE.Line(new THREE.BufferGeometry().setFromPoints(circle), new THREE.LineBasicMaterial({ color: SOURCE_COLOUR, transparent: true, opacity: 0.45 })));
      reach = Math.max(reach, radius);
    }
    const detectors = drawing.detectors.map((quad) => quad.map(v3));
    this.scene.add(lineSegments(detectors.flatMap((q) => [q[0], q[1], q[1], q[2], q[2], q[3], q[3], q[0]]), DETECTOR_COLOUR, 0.35));
    for (const q of detectors) for (const p of q) reach = Math.max(reach, Math.hypot(p.x, p.y));
    this.detectors = detectors;
    this.chosen = new THREE.Group();
    this.scene.add(this.chosen);

    this.camera = new THREE.PerspectiveCamera(40, 1, reach / 100, reach * 20);
    this.camera.up.set(0, 0, 1);
    this.camera.position.set(reach * 1.6, -reach * 1.9, reach * 1.3);
    this.camera.lookAt(0, 0, 0);
    this.controls = new OrbitControls(this.camera, this.canvas);
    this.controls.addEventListener('change', () => this.render());
    this.resizeObserver = new ResizeObserver(() => this.render());
    this.resizeObserver.observe(this.canvas);
    this.choose(0);
  }

  /** Highlight view `i`: its detector, and rays from the source to the detector's corners. */
  choose(i) {
    const d = this.drawing;
    for (const child of [...this.chosen.children]) {
      this.chosen.remove(child);
      child.geometry.dispose();
      child.material.dispose();
    }
    const q = this.detectors[i];
    if (!q) return;
    const pts = [q[0], q[1], q[1], q[2], q[2], q[3], q[3], q[0]];
    if (d.sources) {
      const s = v3(d.sources[i]);
      for (const c of q) pts.push(s, c);
    } else if (d.directions) {
      const dir = v3(d.directions[i]);
      const reach = Math.hypot(...d.volume_box[1]) * 2;
      for (const c of q) pts.push(c.clone().addScaledVector(dir, -reach), c);
    }
    this.chosen.add(lineSegments(pts, CHOSEN_COLOUR));
    const fill = new THREE.BufferGeometry().setFromPoints([q[0], q[1], q[2], q[0], q[2], q[3]]);
    this.chosen.add(new THREE.Mesh(fill, new THREE.MeshBasicMaterial({ color: CHOSEN_COLOUR, transparent: true, opacity: 0.25, side: THREE.DoubleSide })));
    let angle = '';
    if (d.sources) angle = ` — source at ${((Math.atan2(d.sources[i][1], d.sources[i][0]) * 180) / Math.PI).toFixed(1)}°`;
    this.label.textContent = `${i + 1} / ${d.n_views} (${d.mode} beam)${angle}`;
    this.render();
  }

  render() {
    const rect = this.canvas.getBoundingClientRect();
    const w = Math.max(1, Math.round(rect.width));
    const hgt = Math.max(1, Math.round(rect.height));
    this.renderer.setSize(w, hgt, false);
    this.camera.aspect = w / hgt;
    this.camera.updateProjectionMatrix();
    this.renderer.render(this.scene, this.camera);
  }

  dispose() {
    this.resizeObserver.disconnect();
    this.controls.dispose();
    this.renderer.dispose();
    this.renderer.forceContextLoss();
    this.el.remove();
  }
}
