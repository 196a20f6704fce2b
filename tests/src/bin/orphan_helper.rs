//! Helper process of the conformance case `killed_owner_leaves_nothing`: opens a session
//! on the engine named by its first argument, prints its container id, then runs code for minutes
//! until it is killed.

use biocage_conformance::harness;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let engine = std::env::args()
        .nth(1)
        .expect("usage: orphan_helper ENGINE");
    let rt = harness::connect(&engine).await.expect("engine");
    let session = harness::session(rt.as_ref()).await;
    let id = session.info().await.expect("info").container_id;
    println!("BIOCAGE-CONTAINER {id}");
    let _ = session.run("import time\ntime.sleep(600)").await;
}
