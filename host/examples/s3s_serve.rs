//! A real S3 server for scripts (the torture suite, benchmarks): s3s-fs storing
//! objects as files under ROOT, on 127.0.0.1:PORT, with SigV4 signatures checked
//! against one key pair. Prints the endpoint once it accepts connections, then one
//! line per request (`METHOD PATH`), so that scripts can count requests.
//!
//! Usage: s3s_serve ROOT PORT ACCESS_KEY SECRET_KEY
//! Build: cargo build -p sluice --example s3s_serve
//!
//! s3s-fs answers every ListObjectsV2 by walking the whole bucket, so with 10,000
//! databases in one bucket each listing would read every object of all of them:
//! the server, not the replicator, would be measured. Here a listing whose prefix
//! names a directory walks that directory only, as a real store's index would.

use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result};

struct Server {
    fs: s3s_fs::FileSystem,
    root: std::path::PathBuf,
}

/// Forwards the operations Sluice and Litestream use to s3s-fs, but for prefix listings.
#[async_trait::async_trait]
impl S3 for Server {
    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.fs.abort_multipart_upload(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.fs.complete_multipart_upload(req).await
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        self.fs.copy_object(req).await
    }

    async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
        self.fs.create_bucket(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.fs.create_multipart_upload(req).await
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.fs.delete_object(req).await
    }

    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.fs.delete_objects(req).await
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.fs.get_bucket_location(req).await
    }

    /// s3s-fs's answer, with its body read 1 MiB at a time: s3s-fs reads 4 KiB per
    /// hop to tokio's blocking pool, which at hundreds of MB/s would measure this
    /// server rather than the client.
    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        let path = self.root.join(&req.input.bucket).join(&req.input.key);
        let mut resp = self.fs.get_object(req).await?;
        let start = match resp.output.content_range.as_deref() {
            Some(r) => r.trim_start_matches("bytes ").split('-').next().and_then(|a| a.parse().ok()).unwrap_or(0),
            None => 0u64,
        };
        let len = resp.output.content_length.unwrap_or(0) as u64;
        let file = std::sync::Arc::new(std::fs::File::open(&path).map_err(|e| s3s::s3_error!(e, NoSuchKey))?);
        let chunks = futures::stream::unfold((start, start + len), move |(at, end)| {
            let file = file.clone();
            async move {
                if at >= end {
                    return None;
                }
                let n = (end - at).min(1 << 20) as usize;
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; n];
                    std::os::unix::fs::FileExt::read_exact_at(&*file, &mut buf, at).map(|()| bytes::Bytes::from(buf))
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
                let next = if read.is_ok() { at + n as u64 } else { end };
                Some((read, (next, end)))
            }
        });
        resp.output.body = Some(StreamingBlob::wrap(chunks));
        Ok(resp)
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        self.fs.head_bucket(req).await
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        self.fs.head_object(req).await
    }

    async fn list_buckets(&self, req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        self.fs.list_buckets(req).await
    }

    async fn list_objects(&self, req: S3Request<ListObjectsInput>) -> S3Result<S3Response<ListObjectsOutput>> {
        self.fs.list_objects(req).await
    }

    async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        self.fs.list_parts(req).await
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        self.fs.put_object(req).await
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        self.fs.upload_part(req).await
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        let i = &req.input;
        let prefix = i.prefix.clone().unwrap_or_default();
        let Some(slash) = prefix.rfind('/') else { return self.fs.list_objects_v2(req).await };
        if i.delimiter.is_some() || i.continuation_token.is_some() || i.start_after.is_some() || prefix.contains("..") {
            return self.fs.list_objects_v2(req).await;
        }
        let bucket_root = self.root.join(&i.bucket);
        let mut dirs = vec![bucket_root.join(&prefix[..slash])];
        let mut contents = Vec::new();
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                let Ok(t) = e.file_type() else { continue };
                if t.is_dir() {
                    dirs.push(e.path());
                    continue;
                }
                let Some(key) = e.path().strip_prefix(&bucket_root).ok().and_then(|k| k.to_str().map(str::to_string))
                else {
                    continue;
                };
                let Ok(m) = e.metadata() else { continue };
                if key.starts_with(&prefix) {
                    contents.push(Object {
                        key: Some(key),
                        size: Some(m.len() as i64),
                        last_modified: m.modified().ok().map(Timestamp::from),
                        ..Default::default()
                    });
                }
            }
        }
        contents.sort_by(|a, b| a.key.cmp(&b.key));
        let output = ListObjectsV2Output {
            key_count: Some(contents.len() as i32),
            max_keys: i.max_keys,
            is_truncated: Some(false),
            name: Some(i.bucket.clone()),
            prefix: Some(prefix),
            contents: Some(contents),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: s3s_serve ROOT PORT ACCESS_KEY SECRET_KEY");
        std::process::exit(2);
    }
    let (root, port) = (std::path::PathBuf::from(&args[1]), args[2].parse::<u16>().expect("PORT is a number"));
    std::fs::create_dir_all(&root).expect("cannot create ROOT");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("cannot bind the port");
        let fs = s3s_fs::FileSystem::new(&root).expect("cannot serve ROOT");
        let mut b = s3s::service::S3ServiceBuilder::new(Server { fs, root: root.clone() });
        b.set_auth(s3s::auth::SimpleAuth::from_single(args[3].as_str(), args[4].as_str()));
        let service = b.build();
        println!("http://{}", listener.local_addr().unwrap());
        let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        loop {
            let Ok((sock, _)) = listener.accept().await else { continue };
            let _ = sock.set_nodelay(true);
            let svc = service.clone();
            let logged = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                println!("{} {}", req.method(), req.uri().path());
                let svc = svc.clone();
                async move { hyper::service::Service::call(&svc, req).await }
            });
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(sock), logged).into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
}
