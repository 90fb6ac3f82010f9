"""Uploads a file over tus with tuspy (PyPI `tuspy`, the client under test):
it creates the upload, sends it in chunks and, when a request fails (the
e2e test's proxy drops the connection), asks the server for the offset and
continues from there. Prints the upload's URL.

usage: tus_upload.py ENDPOINT TOKEN FILE CHUNK_BYTES
"""

import os
import sys

from tusclient import client

endpoint, token, path, chunk = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tus = client.TusClient(endpoint, headers={"Authorization": f"Bearer {token}"})
uploader = tus.uploader(
    file_path=path,
    chunk_size=chunk,
    metadata={"filename": os.path.basename(path), "filetype": "video/mp4", "bitrate": "128"},
    retries=30,
    retry_delay=0.3,
)
uploader.upload()
print(uploader.url)
