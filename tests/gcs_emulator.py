"""`python tests/gcs_emulator.py start …`: gcp-storage-emulator, answering downloads with the object generation
headers that Cloud Storage sends (`x-goog-generation`, `x-goog-metageneration`). tensorstore reads them to know
which version of an object it holds (Orbax's OCDBT manifest); the emulator leaves them out, which tensorstore
reports as a malformed generation. It also answers Cloud Storage's `moveTo` (what gcsfs renames with): without it
gcsfs retried the emulator's 501 five times, 16 s a rename, before falling back to copy and delete."""

import sys
from http import HTTPStatus

from gcp_storage_emulator import server
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


def move(request, response, storage, *args, **kwargs):
    """`POST …/b/B/o/SOURCE/moveTo/o/TARGET`: the object renamed within its bucket (a copy, then the delete)."""
    bucket, source = request.params["bucket_name"], request.params["object_id"]
    try:
        moved = objects._copy(request.base_url, storage, bucket, source, bucket, request.params["dest_object_id"])
    except NotFound:
        response.status = HTTPStatus.NOT_FOUND
        return
    objects._delete(storage, bucket, source)
    response.json(moved)


MOVE = r"^/storage/v1/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)/moveTo/o/(?P<dest_object_id>.*[^/]+)$"
server.HANDLERS = ((MOVE, {server.POST: move}),) + tuple(server.HANDLERS)  # the router reads it per request

from gcp_storage_emulator.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
