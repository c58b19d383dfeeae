// The live view (`tracemesh serve --http`): the page is the report as of one
// generation of live detection; when the server announces a newer one, reload.
(function () {
  'use strict';
  const live = JSON.parse(document.getElementById('tm-live').textContent);
  const status = document.getElementById('live-status');
  const es = new EventSource('events' + location.search);
  es.addEventListener('report', (e) => {
    const r = JSON.parse(e.data);
    if (r.generation !== live.generation) location.reload();
    else if (status) status.textContent = 'live: ' + r.open + ' open of ' + r.diversions + ' diversion episode(s); connected';
  });
  es.onerror = () => { if (status) status.textContent = 'live: disconnected, retrying'; };
})();
