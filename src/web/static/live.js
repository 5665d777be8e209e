// firstkey dispatcher console: the live state of an incident's grants. The page shows each grant's
// state as stored and works without this script (reload for the newest); with it, the page listens
// to the incident's server-sent events (data-live-events on the grants table) and updates each
// grant's state in place. The browser reconnects by itself when the stream ends.
"use strict";

(function () {
  function update(root, list) {
    list.forEach(function (s) {
      const cell = root.querySelector("[data-grant-state=\"" + s.grant + "\"]");
      if (!cell) {
        // A grant this page does not show yet (made elsewhere): say so once.
        const notice = document.querySelector("[data-live-new]");
        if (notice) notice.hidden = false;
        return;
      }
      const badge = cell.querySelector(".badge");
      if (!badge) return;
      if (badge.textContent !== s.words) badge.textContent = s.words;
      badge.className = "badge " + s.badge;
      cell.setAttribute("data-state", s.state);
      // Where the homeowner's live consent stands, for grants that asked for it.
      const consent = cell.querySelector("[data-consent]");
      if (consent) {
        const words = s.consent || "";
        if (consent.textContent !== words) consent.textContent = words;
        consent.hidden = !words;
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const root = document.querySelector("[data-live-events]");
    if (!root || !window.EventSource) return;
    const status = document.querySelector("[data-live-status]");
    const source = new EventSource(root.getAttribute("data-live-events"));
    source.addEventListener("grants", function (event) {
      let list = [];
      try { list = JSON.parse(event.data); } catch (e) { return; }
      update(root, list);
      if (status) status.textContent = "Live: states update as they change.";
      root.setAttribute("data-live", "connected");
    });
    source.addEventListener("error", function () {
      if (status) status.textContent = "Reconnecting… (reload the page to see the newest states)";
      root.setAttribute("data-live", "reconnecting");
    });
  });
})();
