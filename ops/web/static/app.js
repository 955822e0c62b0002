// The page's only script (served from the app; the Content-Security-Policy allows no inline code).
"use strict";

// Lease countdowns: "12:34 left", then "lease expired" once it has run out.
function tickLeases() {
  const now = Date.now();
  for (const el of document.querySelectorAll("[data-until-ms]")) {
    const left = Number(el.dataset.untilMs) - now;
    if (left <= 0) {
      el.textContent = "lease expired";
      el.classList.add("expired");
    } else {
      const s = Math.floor(left / 1000);
      el.textContent = `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")} left`;
    }
  }
}

// Filter forms apply on change; the button stays for use without script.
function autosubmit() {
  for (const form of document.querySelectorAll("form[data-autosubmit]")) {
    for (const sel of form.querySelectorAll("select")) {
      sel.addEventListener("change", () => form.submit());
    }
  }
}

// A second click on an action button while its request is in flight would act twice.
function guardDoubleSubmit() {
  for (const form of document.querySelectorAll("form[method=post]")) {
    form.addEventListener("submit", () => {
      for (const b of form.querySelectorAll("button")) b.disabled = true;
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  tickLeases();
  setInterval(tickLeases, 1000);
  autosubmit();
  guardDoubleSubmit();
});
