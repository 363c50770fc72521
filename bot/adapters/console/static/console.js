// Live parts: an element with data-live="?part=..." is refetched every few seconds
// and its content swapped in. The server escaped everything; nothing here builds HTML.
(function () {
  const every = 2000;
  async function refresh(el) {
    try {
      const resp = await fetch(location.pathname + el.dataset.live, {cache: "no-store"});
      if (resp.ok) {
        const html = await resp.text();
        if (html !== el.dataset.last) { el.innerHTML = html; el.dataset.last = html; }
      }
    } catch (e) { /* the service restarts: try again at the next turn */ }
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(function (el) {
      setInterval(function () { refresh(el); }, every);
    });
  });
})();
