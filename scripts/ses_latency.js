// Preloaded into aws-ses-v2-local by scripts/crosscheck.py (`node -r`):
// every SES send call is answered SES_LATENCY_MS (default 50) later, as a
// remote SES endpoint would be; the emulator's own code is left as it is.
'use strict';

const http = require('http');

const latencyMs = Number(process.env.SES_LATENCY_MS ?? 50);
const emit = http.Server.prototype.emit;

http.Server.prototype.emit = function delayed(event, req, ...rest) {
  if (event === 'request' && latencyMs > 0 && req.url.startsWith('/v2/email/outbound-')) {
    setTimeout(() => emit.call(this, event, req, ...rest), latencyMs);
    return true;
  }
  return emit.call(this, event, req, ...rest);
};
