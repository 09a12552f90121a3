() => {
  // Japanese (and other) IMEs confirm a conversion with Enter. Gradio's textbox sends on Enter,
  // so without this a half-converted message would be sent. The confirming Enter is marked
  // isComposing (Chrome, Firefox) or keyCode 229 (Safari, after compositionend): stop it before
  // Gradio's handler sees it, and let the browser finish the conversion as usual.
  const isImeEnter = (event) => event.key === "Enter" && (event.isComposing || event.keyCode === 229);
  window.addEventListener(
    "keydown",
    (event) => {
      const target = event.target;
      if (isImeEnter(event) && target instanceof Element && target.closest("#jslm-input")) {
        event.stopImmediatePropagation();
      }
    },
    true,
  );
  // On a phone the side panel covers the whole screen: start with it closed there.
  if (window.matchMedia("(max-width: 768px)").matches) {
    const closeSidebar = (tries) => {
      const toggle = document.querySelector("#jslm-sidebar.open .toggle-button");
      if (toggle) toggle.click();
      else if (tries > 0) setTimeout(() => closeSidebar(tries - 1), 100);
    };
    closeSidebar(50);
  }
}
