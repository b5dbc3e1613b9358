//! A real S3 server for scripts (the torture suite, benchmarks): s3s-fs storing
//! objects as files under ROOT, on 127.0.0.1:PORT, with SigV4 signatures checked
//! against one key pair. Prints the endpoint once it accepts connections, then one
//! line per request (`METHOD PATH`), so that scripts can count requests.
//!
//! Usage: s3s_serve ROOT PORT ACCESS_KEY SECRET_KEY
//! Build: cargo build -p sluice --example s3s_serve

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
        let mut b = s3s::service::S3ServiceBuilder::new(fs);
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
