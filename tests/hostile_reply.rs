//! A hostile server against the runtime the Qt app links: replies that name
//! a transfer of the other kind must end that transfer with a clear error,
//! never panic the driver or leave the transfer waiting forever.

use std::time::Duration;

use chatxfer::engine::{DownloadSpec, Event, FileState};
use chatxfer::protocol::{frame, FrameDecoder, MsgId, MAX_BODY_LEN};
use chatxfer::runtime::{Client, ClientConfig, ClientEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Answers the 1045 with a 1046 for message 5, then sends a 1042 named like
/// the client's download ("msg-5"); answers nothing else.
async fn hostile_server(listener: TcpListener) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut decoder = FrameDecoder::new(MAX_BODY_LEN);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let Ok(n) = sock.read(&mut buf).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                decoder.extend(&buf[..n]);
                while let Ok(Some(f)) = decoder.next_frame() {
                    if f.id != MsgId::IMG_CHAT_DOWN_INFO_SYNC_REQ {
                        continue;
                    }
                    let mut out = Vec::new();
                    let info = serde_json::json!({"error": 0, "message_id": 5, "name": "x.bin",
                        "total_size": "100000", "sender_id": 1, "recv_id": 2});
                    frame::encode(MsgId(1046), &serde_json::to_vec(&info).unwrap(), &mut out);
                    let ack = serde_json::json!({"error": 0, "name": "msg-5", "seq": 1});
                    frame::encode(MsgId(1042), &serde_json::to_vec(&ack).unwrap(), &mut out);
                    if sock.write_all(&out).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_reply_naming_a_download_fails_it_with_a_clear_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(hostile_server(listener));
    let out = tempfile::tempdir().unwrap();
    let (client, mut events) = Client::start(ClientConfig::new(addr.to_string())).unwrap();
    let mut spec = DownloadSpec::new("msg-5", 5);
    spec.token = "tok".into();
    client.add_download(spec, out.path(), None).unwrap();
    // Generous: the failure comes with the first reply, far inside the
    // 30 s ack timeout a silent server would need.
    let failure = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match events.recv().await {
                Some(ClientEvent::Transfer(Event::Failed { name, failure })) if name == "msg-5" => {
                    break failure
                }
                Some(_) => {}
                None => panic!("event stream ended: the driver died"),
            }
        }
    })
    .await
    .expect("the download ends instead of hanging");
    let text = failure.to_string();
    assert!(
        text.contains("upload reply (1042") && text.contains("msg-5"),
        "{text}"
    );
    assert_eq!(client.status("msg-5").unwrap().state, FileState::Failed);
    assert_eq!(client.stats().wrong_kind_replies, 1);
    let left: Vec<_> = std::fs::read_dir(out.path()).unwrap().collect();
    assert!(left.is_empty(), "nothing left in the destination: {left:?}");
    client.shutdown(None).await;
}
