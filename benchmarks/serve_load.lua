-- wrk script: POST one image to /v1/classify as multipart/form-data (see serve_load.sh).
local path = os.getenv("IMAGE") or "samples/cat.jpg"
local file = assert(io.open(path, "rb"))
local data = file:read("*a")
file:close()

local boundary = "imgcls-load-boundary"
wrk.method = "POST"
wrk.path = "/v1/classify?top_k=5"
wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. boundary
wrk.body = "--" .. boundary .. "\r\n"
  .. 'Content-Disposition: form-data; name="file"; filename="image.jpg"\r\n'
  .. "Content-Type: image/jpeg\r\n\r\n"
  .. data .. "\r\n--" .. boundary .. "--\r\n"
