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
    if (isPhone() && target instanceof Element && target.closest(".jslm-conversations label, #jslm-new-chat")) {
      setTimeout(() => closeSidebar(0), 150);
    }
  });

  // Versions of a message (Retry, an edit): ◀ 2/3 ▶ under it. The server lists them in a hidden box as
  // [position, shown, count]; a choice goes back through a hidden button (layout.CHOOSE_VERSION_JS reads it).
  const VERSION_TEXT = JSLM_VERSION_TEXT;
  const versionText = VERSION_TEXT[(navigator.language || "ja").toLowerCase().startsWith("en") ? "en" : "ja"];
  const choose = (position, version) => {
    window.jslmVersionChoice = `${position}:${version}`;
    document.querySelector("#jslm-version-switch")?.click();
  };
  const switcher = (position, shown, count) => {
    const nav = document.createElement("div");
    nav.className = "jslm-switcher";
    nav.setAttribute("role", "group");
    nav.setAttribute("aria-label", `${versionText.jslm_version} ${shown}/${count}`);
    nav.dataset.state = `${position}:${shown}:${count}`;
    const button = (label, symbol, target) => {
      const element = document.createElement("button");
      element.type = "button";
      element.textContent = symbol;
      element.setAttribute("aria-label", label);
      element.title = label;
      element.disabled = target < 0 || target >= count;
      element.addEventListener("click", (event) => {
        event.stopPropagation();
        choose(position, target);
      });
      return element;
    };
    const where = document.createElement("span");
    where.className = "jslm-switcher-count";
    where.textContent = `${shown} / ${count}`;
    nav.append(button(versionText.jslm_previous_version, "◀", shown - 2), where,
               button(versionText.jslm_next_version, "▶", shown));
    return nav;
  };
  let drawn = "";
  const drawSwitchers = () => {
    const raw = document.querySelector("#jslm-versions textarea")?.value || "[]";
    const rows = [...document.querySelectorAll("#jslm-chatbot .message-wrap > .message-row")];
    const key = `${raw}|${rows.length}|${document.querySelectorAll("#jslm-chatbot .jslm-switcher").length}`;
    if (key === drawn) return;
    drawn = key;
    let wanted = [];
    try { wanted = JSON.parse(raw); } catch { wanted = []; }
    const keep = new Set();
    for (const [position, shown, count] of wanted) {
      const holder = rows[position]?.nextElementSibling;
      if (!holder || !holder.classList.contains("message-buttons")) continue;
      const state = `${position}:${shown}:${count}`;
      let nav = holder.querySelector(":scope > .jslm-switcher");
      if (nav?.dataset.state !== state) {
        nav?.remove();
        nav = switcher(position, shown, count);
        holder.prepend(nav);
      }
      keep.add(nav);
    }
    document.querySelectorAll("#jslm-chatbot .jslm-switcher").forEach((nav) => keep.has(nav) || nav.remove());
    drawn = `${raw}|${rows.length}|${keep.size}`;
  };
  new MutationObserver(() => requestAnimationFrame(drawSwitchers))
    .observe(document.body, {subtree: true, childList: true});
  setInterval(drawSwitchers, 300);  // the hidden box changes its value without a DOM mutation
}
