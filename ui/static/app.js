// The router: the first path segment names the page module under /static/pages/.
// A page module exports render(root, ctx) and may return a function that stops its timers and sockets.
import { showError } from "/static/lib.js";

const PAGES = ["graph", "logs", "traces", "services", "dashboards"];
let cleanup = null;
let renderSeq = 0;

function pageOf(pathname) {
  const first = pathname.split("/").filter(Boolean)[0] || "graph";
  return PAGES.includes(first) ? first : null;
}

async function route() {
  const seq = ++renderSeq;
  if (cleanup) {
    try { cleanup(); } catch (e) { console.warn("page cleanup failed", e); }
    cleanup = null;
  }
  const root = document.getElementById("app");
  const page = pageOf(location.pathname);
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.page === page);
  }
  root.replaceChildren();
  if (!page) {
    showError(root, `No page at ${location.pathname}. Pick one from the bar above.`);
    return;
  }
  document.title = `${page[0].toUpperCase()}${page.slice(1)} · meshscope`;
  let mod;
  try {
    mod = await import(`/static/pages/${page}.js`);
  } catch (e) {
    showError(root, `The ${page} page failed to load: ${e.message}`);
    return;
  }
  if (seq !== renderSeq) return; // the user already went elsewhere
  const rest = location.pathname.split("/").filter(Boolean).slice(1).map(decodeURIComponent);
  let out;
  try {
    out = await mod.render(root, { page, rest, navigate });
  } catch (e) {
    showError(root, `The ${page} page failed: ${e.message}`);
    throw e;
  }
  if (seq === renderSeq && typeof out === "function") cleanup = out;
  else if (typeof out === "function") out();
}

// Same-page links go through history, so the state in the URL survives and back/forward work.
export function navigate(href, { replace = false } = {}) {
  const url = new URL(href, location.href);
  if (url.origin !== location.origin) { location.href = href; return; }
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  route();
}

document.addEventListener("click", (ev) => {
  const a = ev.target.closest("a[href]");
  if (!a || a.target || ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !pageOf(url.pathname) || a.hasAttribute("download")) return;
  ev.preventDefault();
  navigate(url.href);
});
window.addEventListener("popstate", route);
window.meshscope = { navigate };
route();
