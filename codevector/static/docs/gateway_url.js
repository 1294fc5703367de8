"use strict";
// "Your gateway URL": pin a gateway origin in this browser (localStorage) and rewrite every route
// link, curl example and SDK example on the docs pages to it. Links between docs pages stay.
(function () {
  const KEY = "codevector.gatewayUrl";
  const PLACEHOLDER = "{GATEWAY}";
  const input = document.getElementById("gateway-url");
  const status = document.getElementById("gateway-url-status");

  function normalise(value) {
    let url;
    try {
      url = new URL(value.trim());
    } catch (err) {
      return null;
    }
    if (!["http:", "https:"].includes(url.protocol) || !url.host) return null;
    if ((url.pathname !== "/" && url.pathname !== "") || url.search || url.hash) return null;
    return url.origin;
  }

  function current() {
    return localStorage.getItem(KEY) || window.location.origin;
  }

  function apply() {
    const base = current();
    document.querySelectorAll("[data-route]").forEach((link) => {
      link.href = base + link.dataset.route;
      if (link.dataset.showUrl !== undefined) link.textContent = base + link.dataset.route;
    });
    document.querySelectorAll("[data-template]").forEach((block) => {
      block.textContent = block.dataset.template.split(PLACEHOLDER).join(base);
    });
    input.value = localStorage.getItem(KEY) || "";
    input.placeholder = window.location.origin;
    status.textContent = localStorage.getItem(KEY) ? "Pinned: " + base : "Default: this server, " + base;
  }

  document.getElementById("gateway-url-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (!input.value.trim()) {
      localStorage.removeItem(KEY);
      apply();
      return;
    }
    const origin = normalise(input.value);
    if (!origin) {
      status.textContent = "Not a gateway URL: give a scheme, host and optional port, such as https://gw.example.com";
      return;
    }
    localStorage.setItem(KEY, origin);
    apply();
  });
  document.getElementById("gateway-url-clear").addEventListener("click", () => {
    localStorage.removeItem(KEY);
    apply();
  });
  apply();
})();
