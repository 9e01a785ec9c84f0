// tandem console: live rows by server-sent events, the ladder's message pane, confirmations.
"use strict";

function liveRows() {
  const body = document.querySelector("[data-stream]");
  if (!body || !window.EventSource) return;
  const state = document.getElementById("live-state");
  const source = new EventSource(body.dataset.stream);
  source.addEventListener("calls", (event) => {
    body.innerHTML = event.data;
    if (state) { state.textContent = "live"; state.classList.remove("stale"); }
  });
  source.onerror = () => {
    if (state) { state.textContent = "reconnecting"; state.classList.add("stale"); }
  };
}

function showMessage(index) {
  document.querySelectorAll(".sip.shown").forEach((el) => el.classList.remove("shown"));
  document.querySelectorAll(".arrow.selected").forEach((el) => el.classList.remove("selected"));
  const message = document.getElementById("msg-" + index);
  const arrow = document.querySelector(`.arrow[data-msg="${index}"]`);
  if (message) message.classList.add("shown");
  if (arrow) arrow.classList.add("selected");
  const pane = document.getElementById("messages");
  if (pane) pane.classList.add("open");
}

function ladder() {
  document.querySelectorAll(".arrow").forEach((arrow) => {
    arrow.addEventListener("click", (event) => {
      event.preventDefault();
      showMessage(arrow.dataset.msg);
    });
  });
  if (location.hash.startsWith("#msg-")) showMessage(location.hash.slice(5));
}

function confirmations() {
  document.addEventListener("submit", (event) => {
    const question = event.target.dataset.confirm;
    if (question && !window.confirm(question)) event.preventDefault();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  liveRows();
  ladder();
  confirmations();
});
