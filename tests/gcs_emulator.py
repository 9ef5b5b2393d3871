"""`python tests/gcs_emulator.py start …`: gcp-storage-emulator, answering downloads with the object generation
headers that Cloud Storage sends (`x-goog-generation`, `x-goog-metageneration`). tensorstore reads them to know
which version of an object it holds (Orbax's OCDBT manifest); the emulator leaves them out, which tensorstore
reports as a malformed generation."""

import sys

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
    try:
        resource = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = resource["generation"]
        response["x-goog-metageneration"] = resource["metageneration"]
    except NotFound:
        pass
    _download(request, response, storage, *args, **kwargs)


objects.download = download  # before the server module binds its routes

from gcp_storage_emulator.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
