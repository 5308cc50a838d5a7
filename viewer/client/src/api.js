// Talking to the recon view server (same origin only; the page's CSP forbids anything else).

export async function getJSON(url) {
  const response = await fetch(url, { cache: 'no-store' });
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

export async function getBytes(url) {
  const response = await fetch(url, { cache: 'no-store' });
  if (!response.ok) {
    const text = await response.text().catch(() => '');
    throw new Error(`${url}: HTTP ${response.status} ${text.trim()}`);
  }
  return response.arrayBuffer();
}

/** A URL that changes when the file does (so browsers and loaders do not reuse a stale copy). */
export function versioned(file) {
  return file ? `${file.url}?v=${encodeURIComponent(file.mtime)}` : null;
}
