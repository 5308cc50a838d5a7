// Training / evaluation cameras of cameras.json as frustums with the photo on the image plane.
//
// cameras.json poses are camera-to-world in the OpenCV convention (x right, y down, z forward);
// three.js cameras are OpenGL (x right, y up, z backward): flip the camera frame's y and z.

import * as THREE from 'three';
import { hooks } from './testhooks.js';

export const SPLIT_COLOURS = { train: 0xff9f1c, eval: 0x2ec4b6 };
export const SELECTED_COLOUR = 0xffe066;
const FLIP_YZ = new THREE.Matrix4().makeScale(1, -1, -1);

/** THREE.Matrix4 of a row-major 4x4 array. */
export function matrixFromRows(rows) {
  const m = new THREE.Matrix4();
  m.set(...rows.flat());
  return m;
}

/** World matrix of a three.js camera placed like the OpenCV camera-to-world `c2w`. */
export function glCameraMatrix(c2w) {
  return matrixFromRows(c2w).multiply(FLIP_YZ);
}

/** Vertical field of view (degrees) of a view's intrinsics. */
export function viewFov(view) {
  return (2 * Math.atan(view.height / 2 / view.fy) * 180) / Math.PI;
}

function axes(view) {
  const m = view.c2w;
  return {
    centre: new THREE.Vector3(m[0][3], m[1][3], m[2][3]),
    forward: new THREE.Vector3(m[0][2], m[1][2], m[2][2]).normalize(),
    down: new THREE.Vector3(m[0][1], m[1][1], m[2][1]).normalize(),
  };
}

/** The point closest (least squares) to every camera's optical axis: what the capture looks at. */
export function lookAtPoint(views) {
  const posed = views.filter((v) => v.c2w);
  if (posed.length === 0) return null;
  const a = new THREE.Matrix3().set(0, 0, 0, 0, 0, 0, 0, 0, 0);
  const b = new THREE.Vector3();
  const ae = a.elements;
  for (const view of posed) {
    const { centre, forward: d } = axes(view);
    const p = [[1 - d.x * d.x, -d.x * d.y, -d.x * d.z], [-d.y * d.x, 1 - d.y * d.y, -d.y * d.z], [-d.z * d.x, -d.z * d.y, 1 - d.z * d.z]];
    for (let r = 0; r < 3; r++) for (let c = 0; c < 3; c++) ae[c * 3 + r] += p[r][c];
    b.x += p[0][0] * centre.x + p[0][1] * centre.y + p[0][2] * centre.z;
    b.y += p[1][0] * centre.x + p[1][1] * centre.y + p[1][2] * centre.z;
    b.z += p[2][0] * centre.x + p[2][1] * centre.y + p[2][2] * centre.z;
  }
  if (posed.length >= 2 && Math.abs(a.determinant()) > 1e-6) return b.applyMatrix3(a.clone().invert());
  const { centre, forward } = axes(posed[0]);
  return centre.add(forward.multiplyScalar(3));
}

/** World "up" of the capture: minus the mean of the cameras' down axes. */
export function worldUp(views) {
  const up = new THREE.Vector3();
  for (const view of views.filter((v) => v.c2w)) up.sub(axes(view).down);
  return up.lengthSq() > 1e-9 ? up.normalize() : new THREE.Vector3(0, 1, 0);
}

/** Median distance from the cameras to `target` (the scene's scale). */
export function sceneScale(views, target) {
  const d = views.filter((v) => v.c2w).map((v) => axes(v).centre.distanceTo(target)).sort((x, y) => x - y);
  return d.length ? d[Math.floor(d.length / 2)] : 1;
}

/** Image-plane corners (top-left, top-right, bottom-right, bottom-left) at `depth` in world. */
export function imageCorners(view, depth) {
  const m = matrixFromRows(view.c2w);
  const px = [[0, 0], [view.width, 0], [view.width, view.height], [0, view.height]];
  return px.map(([u, v]) => new THREE.Vector3(((u - view.cx) / view.fx) * depth, ((v - view.cy) / view.fy) * depth, depth).applyMatrix4(m));
}

const textureLoader = new THREE.TextureLoader();

/**
 * A frustum: lines from the centre to the image corners, the image rectangle, a small triangle
 * on its top edge (the photo's up), and the thumbnail on the image plane (the pick target).
 */
export function buildFrustum(view, depth, onTexture) {
  const group = new THREE.Group();
  group.name = `frustum:${view.name}`;
  const centre = axes(view).centre;
  const [tl, tr, br, bl] = imageCorners(view, depth);
  const topMid = tl.clone().add(tr).multiplyScalar(0.5);
  const up = topMid.clone().sub(bl.clone().add(br).multiplyScalar(0.5)).multiplyScalar(0.15);
  const pts = [centre, tl, centre, tr, centre, br, centre, bl, tl, tr, tr, br, br, bl, bl, tl,
    tl.clone().lerp(tr, 0.35), topMid.clone().add(up), topMid.clone().add(up), tl.clone().lerp(tr, 0.65)];
  const material = new THREE.LineBasicMaterial({ color: SPLIT_COLOURS[view.split] ?? 0xffffff, depthTest: true });
  const lines = new THREE.LineSegments(new THREE.BufferGeometry().setFromPoints(pts), material);
  group.add(lines);

  const geometry = new THREE.BufferGeometry();
  geometry.setAttribute('position', new THREE.Float32BufferAttribute([tl, tr, br, bl].flatMap((p) => [p.x, p.y, p.z]), 3));
  geometry.setAttribute('uv', new THREE.Float32BufferAttribute([0, 1, 1, 1, 1, 0, 0, 0], 2));
  geometry.setIndex([0, 2, 1, 0, 3, 2]);
  const plane = new THREE.Mesh(geometry, new THREE.MeshBasicMaterial({ color: 0x444444, side: THREE.DoubleSide, transparent: true, opacity: 0.85 }));
  plane.userData.viewName = view.name;
  group.add(plane);
  const url = view.photo || view.render;
  if (url) {
    hooks.track(new Promise((resolve) => {
      textureLoader.load(url, (texture) => {
        texture.colorSpace = THREE.SRGBColorSpace;
        plane.material.map = texture;
        plane.material.color.set(0xffffff);
        plane.material.needsUpdate = true;
        onTexture && onTexture();
        resolve();
      }, undefined, () => resolve());
    }));
  }
  group.userData = { view, lines, plane, centre: centre.clone().add(tl).add(tr).add(br).add(bl).multiplyScalar(0.2) };
  return group;
}

/** Highlight one frustum (by view name) in a group built by `buildFrustum`. */
export function highlight(frustums, name) {
  for (const f of frustums.children) {
    const selected = f.userData.view.name === name;
    f.userData.lines.material.color.set(selected ? SELECTED_COLOUR : SPLIT_COLOURS[f.userData.view.split] ?? 0xffffff);
  }
}

/** Hide one frustum (the camera the view sits at: its own image plane would cover the view). */
export function hideOnly(frustums, name) {
  for (const f of frustums.children) f.visible = f.userData.view.name !== name;
}
