// Node's `eventsource` package against an ended topic: prints what it saw
// as JSON once it has given up (or after 10 s). Usage: node ended.js URL
"use strict";
const EventSource = require("eventsource");
const seen = [];
let waiting = null;
const es = new EventSource(process.argv[2]);
const done = () => {
  console.log(JSON.stringify({ seen, readyState: es.readyState }));
  es.close();
  process.exit(0);
};
es.onopen = () => seen.push("open");
es.addEventListener("ssehub:closed", (e) => seen.push(`closed ${e.data}`));
es.onerror = (e) => {
  seen.push(`error ${es.readyState}${e && e.status ? " " + e.status : ""}`);
  // This package closes just after reporting the 204. Given up: wait three
  // times the longest retry for a request that must not come.
  setTimeout(() => {
    if (es.readyState === EventSource.CLOSED && !waiting) waiting = setTimeout(done, 900);
  }, 0);
};
setTimeout(done, 10000);
