// Refresh the page's content in place every data-refresh seconds, without reloading: the
// server answers a request with the X-Dashboard-Fragment header with the content alone.
(function () {
  "use strict";
  var seconds = parseFloat(document.body.dataset.refresh || "0");
  var content = document.getElementById("content");
  var stamp = document.getElementById("refreshed");
  if (!seconds || !content || content.querySelector("[data-no-refresh]")) return;
  function busy() {
    var active = document.activeElement;
    return active && content.contains(active) && /INPUT|SELECT|TEXTAREA/.test(active.tagName);
  }
  function refresh() {
    if (document.hidden || busy()) return;
    fetch(window.location.href, { headers: { "X-Dashboard-Fragment": "1" }, credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.text() : Promise.reject(response.status); })
      .then(function (html) {
        content.innerHTML = html;
        stamp.textContent = "updated " + new Date().toLocaleTimeString();
      })
      .catch(function (why) { stamp.textContent = "refresh failed (" + why + ")"; });
  }
  setInterval(refresh, seconds * 1000);
})();
