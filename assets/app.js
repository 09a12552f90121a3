() => {
  const isPhone = () => window.matchMedia("(max-width: 768px)").matches;
  const shown = (selector) => {
    const element = document.querySelector(selector);
    return Boolean(element && element.offsetParent !== null);
  };
  const box = () => document.querySelector("#jslm-input textarea");
  const isEmpty = () => !(box()?.value || "").trim();
  // Send is disabled while the box is empty (or blank): no request is made for nothing.
  const syncSend = () => {
    const send = document.querySelector("#jslm-send");
    if (send && send.disabled !== isEmpty()) send.disabled = isEmpty();
    document.body.toggleAttribute("data-jslm-generating", shown("#jslm-stop"));
  };
  let queued = false;
  const soon = () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => { queued = false; syncSend(); });
  };
  document.addEventListener("input", soon, true);
  new MutationObserver(soon).observe(document.body, {subtree: true, childList: true, attributes: true,
                                                      attributeFilter: ["class", "style", "hidden"]});
  setInterval(syncSend, 500);  // the app itself empties the box after sending (no input event)

  // Japanese (and other) IMEs confirm a conversion with Enter. Gradio's textbox sends on Enter,
  // so without this a half-converted message would be sent. The confirming Enter is marked
  // isComposing (Chrome, Firefox) or keyCode 229 (Safari, after compositionend): stop it before
  // Gradio's handler sees it, and let the browser finish the conversion as usual.
  const isImeEnter = (event) => event.key === "Enter" && (event.isComposing || event.keyCode === 229);
  const plainEnter = (event) => event.key === "Enter" && !event.shiftKey && !isImeEnter(event);
  window.addEventListener(
    "keydown",
    (event) => {
      const target = event.target;
      if (!(target instanceof Element)) return;
      if (event.key === "Escape" && shown("#jslm-stop")) {  // Esc stops a streaming reply
        document.querySelector("#jslm-stop").click();
        return;
      }
      const input = target.closest("#jslm-input");
      if (input && (isImeEnter(event) || (plainEnter(event) && (isEmpty() || shown("#jslm-stop"))))) {
        event.stopImmediatePropagation();  // nothing to send yet, or a reply is still coming
        if (!isImeEnter(event)) event.preventDefault();
        return;
      }
      // Enter in a message's edit box saves the edit (Shift+Enter is a new line), as in the message box.
      if (plainEnter(event) && target.matches("#jslm-chatbot textarea")) {
        const wrap = target.closest(".message-wrap") || document;
        const save = [...wrap.querySelectorAll("button")].find(
          (button) => /^(Submit|送信)$/.test(button.getAttribute("aria-label") || ""));
        if (save) {
          event.preventDefault();
          event.stopImmediatePropagation();
          save.click();
        }
      }
    },
    true,
  );
  // On a phone the side panel covers the whole screen: start with it closed there, and close it
  // once a conversation is picked or a new one started.
  const closeSidebar = (tries) => {
    const toggle = document.querySelector("#jslm-sidebar.open .toggle-button");
    if (toggle) toggle.click();
    else if (tries > 0) setTimeout(() => closeSidebar(tries - 1), 100);
  };
  if (isPhone()) closeSidebar(50);
  document.addEventListener("click", (event) => {
    const target = event.target;
    if (isPhone() && target instanceof Element && target.closest("#jslm-conversations label, #jslm-new-chat")) {
      setTimeout(() => closeSidebar(0), 150);
    }
  });
}
