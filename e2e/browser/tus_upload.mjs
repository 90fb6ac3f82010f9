// Uploads a file over tus with tus-js-client (npm, the client under test, as
// the web app uses it), from Node: it creates the upload, sends it in chunks
// and, when a request fails (the e2e test's proxy drops the connection),
// asks the server for the offset and continues from there. Prints the
// upload's URL.
//
// usage: node tus_upload.mjs ENDPOINT TOKEN FILE CHUNK_BYTES
import fs from 'node:fs';
import path from 'node:path';
import * as tus from 'tus-js-client';

const [endpoint, token, file, chunk] = process.argv.slice(2);
const upload = new tus.Upload(fs.createReadStream(file), {
  endpoint,
  chunkSize: Number(chunk),
  uploadSize: fs.statSync(file).size,
  headers: { Authorization: `Bearer ${token}` },
  metadata: { filename: path.basename(file), filetype: 'video/mp4', bitrate: '128' },
  retryDelays: [0, 200, 500, 1000, 1000, 2000, 2000, 3000, 3000, 5000],
  onError(e) {
    console.error(`tus-js-client: ${e}`);
    process.exit(1);
  },
  onSuccess() {
    console.log(upload.url);
    process.exit(0);
  },
});
upload.start();
