() => {
  // The app page's own script, run once when the page loads (gradio's launch(js=...): no event a
  // request could call). mtan/serve/page_text.py reads this file and fills in the orbit bound.
  const show = (text) => {
    const box = document.querySelector('#live-camera-note');
    if (!box) return;
    box.innerText = text;
    box.style.display = text ? '' : 'none';
  };
  const check = async () => {
    const media = navigator.mediaDevices;
    if (!media || !media.enumerateDevices) {
      show('This browser gives this page no camera: browsers offer a camera only to https:// pages and localhost.');
      return;
    }
    try {
      const devices = await media.enumerateDevices();
      if (!devices.some((d) => d.kind === 'videoinput')) {
        show('No camera was found on this device. The Photo and Video tabs work without one.');
        return;
      }
      if (navigator.permissions && navigator.permissions.query) {
        const status = await navigator.permissions.query({name: 'camera'});
        status.onchange = check;
        if (status.state === 'denied') {
          show('Camera access is refused for this page: allow it in the browser (the icon beside the address), then reload.');
          return;
        }
      }
      show('');
    } catch (e) {
      show('');
    }
  };
  check();
  if (navigator.mediaDevices && navigator.mediaDevices.addEventListener) {
    navigator.mediaDevices.addEventListener('devicechange', check);
  }
  document.addEventListener('click', (e) => { if (e.target.closest && e.target.closest('[role=tab]')) check(); }, true);
  // A clip the browser cannot preview raises gradio's own "Video not playable" toast; the app's one
  // message under the result says what is wrong with it, so that toast is taken away.
  new MutationObserver(() => {
    for (const toast of document.querySelectorAll('.toast-body')) {
      if ((toast.innerText || '').includes('Video not playable')) toast.remove();
    }
  }).observe(document.body, {childList: true, subtree: true});
  // The 3D view turns with the pointer's travel in a drag. Seen from far off the photo's own
  // viewpoint, a scene made from one depth map is streaks, so the travel from the view the scene
  // opened with is bounded: a move (or the release) past the bound reaches the viewer as one at
  // the bound. The bound resets when a new scene comes.
  const ORBIT = ORBIT_PX_JSON;
  const orbit = new WeakMap();
  const sceneCanvas = (e) => e.isTrusted && e.target && e.target.closest && e.target.closest('#scene canvas');
  const clamp = (v, b) => Math.max(-b, Math.min(b, v));
  const handOn = (canvas, e, type, x, y) => canvas.dispatchEvent(new PointerEvent(type, {
    bubbles: true, cancelable: true, pointerId: e.pointerId, pointerType: e.pointerType, isPrimary: e.isPrimary,
    button: e.button, buttons: e.buttons, clientX: x, clientY: y, screenX: x, screenY: y}));
  document.addEventListener('pointerdown', (e) => {
    const canvas = sceneCanvas(e);
    if (!canvas || !e.isPrimary) return;
    const s = orbit.get(canvas) || {x: 0, y: 0};
    Object.assign(s, {lastX: e.clientX, lastY: e.clientY, id: e.pointerId, turning: e.button === 0});
    orbit.set(canvas, s);
  }, true);
  const bounded = (e) => {
    const canvas = sceneCanvas(e);
    const s = canvas && orbit.get(canvas);
    if (!s || !s.turning || s.id !== e.pointerId) return;
    if (e.type !== 'pointermove') s.turning = false;
    else if (!(e.buttons & 1)) return;
    const x = s.x + e.clientX - s.lastX, y = s.y + e.clientY - s.lastY;
    if (Math.abs(x) <= ORBIT.x && Math.abs(y) <= ORBIT.y) {
      Object.assign(s, {x, y, lastX: e.clientX, lastY: e.clientY});
    } else {
      e.stopImmediatePropagation();
      const cx = clamp(x, ORBIT.x), cy = clamp(y, ORBIT.y);
      Object.assign(s, {lastX: s.lastX + cx - s.x, lastY: s.lastY + cy - s.y, x: cx, y: cy});
      handOn(canvas, e, e.type, s.lastX, s.lastY);
    }
    canvas.dataset.orbit = s.x + ',' + s.y;
  };
  for (const type of ['pointermove', 'pointerup', 'pointercancel']) document.addEventListener(type, bounded, true);
  let caption = null;
  new MutationObserver(() => {
    const now = (document.querySelector('#scene-caption') || {}).innerText || '';
    const canvas = document.querySelector('#scene canvas');
    if (now === caption || !canvas) return;
    caption = now;
    orbit.delete(canvas);
    canvas.dataset.orbit = '0,0';
  }).observe(document.body, {childList: true, subtree: true, characterData: true});
}
