// Fleet console: the commands page stays current after every command
// and batch event; only its tables are swapped, so a filter being typed
// stays.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  if (document.getElementById("cmds-section")) Ops.live(["command.", "batch."], ["#batch-summary", "#batches-section", "#cmds-section"]);
});
