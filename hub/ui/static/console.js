/* The console's live glue: one EventSource on /ui/stream (session cookie).
 * "timeline" messages replace an event in place (status changes) or add it to the top
 * of the open customer's timeline; "call" messages show, update or remove a screen-pop
 * banner. New events on the open timeline are announced in the polite #live-status line.
 * No inline script anywhere: the CSP forbids it. */
(function () {
  "use strict";

  function fragment(html) {
    var t = document.createElement("template");
    t.innerHTML = html.trim();
    return t.content;
  }

  function processed(el) {
    if (window.htmx && el) { window.htmx.process(el); }
    return el;
  }

  function onTimeline(msg) {
    var frag = fragment(msg.html);
    var item = frag.querySelector("li.event");
    if (!item) { return; }
    var existing = document.getElementById("ev-" + msg.id);
    if (existing) {
      existing.replaceWith(item);
      processed(item);
    } else {
      var list = document.getElementById("timeline");
      if (list && list.dataset.customer === msg.customer_id) {
        var filter = (list.dataset.channels || "").split(",").filter(Boolean);
        var channel = (item.className.match(/\bev-(\w+)/) || [])[1];
        if (filter.length === 0 || filter.indexOf(channel) >= 0) {
          list.insertBefore(item, list.firstChild);
          processed(item);
          announce(item);
        }
      }
    }
    var status = item.querySelector("[data-status-of]");
    document.querySelectorAll('#composer-status [data-status-of="' + msg.id + '"]').forEach(function (s) {
      if (status) { s.textContent = status.textContent; s.className = status.className; }
    });
  }

  // The timeline is not a live region (endless scrolling would read out whole pages):
  // a new event is announced in one short line of the polite status region instead.
  function announce(item) {
    var badge = item.querySelector(".badge");
    var dir = item.querySelector(".dir");
    status("New " + (badge ? badge.textContent : "event") + (dir ? " " + dir.textContent : "") +
      " on this timeline.");
  }

  function onCall(msg) {
    var bar = document.getElementById("callbar");
    if (!bar) { return; }
    var old = msg.key ? document.getElementById("call-" + msg.key) : null;
    if (msg.state === "completed") {
      if (old) { old.remove(); }
    } else {
      var banner = fragment(msg.html).firstElementChild;
      if (old) { old.replaceWith(banner); } else { bar.insertBefore(banner, bar.firstChild); }
    }
    var count = document.getElementById("call-count");
    if (count) { count.textContent = String(bar.querySelectorAll("article.call").length); }
  }

  function status(text) {
    var el = document.getElementById("live-status");
    if (el) { el.textContent = text; }
  }

  function connect() {
    var url = document.body.dataset.stream;
    if (!url || !window.EventSource) { return; }
    var source = new EventSource(url);
    source.addEventListener("open", function () { status("Live updates on."); document.body.dataset.live = "on"; });
    source.addEventListener("error", function () { status("Live updates reconnecting…"); document.body.dataset.live = "off"; });
    source.addEventListener("timeline", function (e) { onTimeline(JSON.parse(e.data)); });
    source.addEventListener("call", function (e) { onCall(JSON.parse(e.data)); });
    source.addEventListener("ended", function () {
      source.close();
      status("Your session ended: log in again.");
      window.location.assign("/ui/login");
    });
  }

  document.addEventListener("htmx:afterRequest", function (e) {
    var form = e.target;
    if (form && (form.id === "composer" || form.id === "sandbox-sms") && e.detail.successful &&
        e.detail.xhr.responseText.indexOf("composer-error") < 0) {
      var text = form.querySelector("textarea");
      if (text) { text.value = ""; }
    }
  });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", connect);
  } else {
    connect();
  }
})();
