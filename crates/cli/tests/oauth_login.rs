//! `marathon auth login` end to end: the real binary against a real
//! authorization server (oidc-provider on loopback: PKCE required, rotating
//! refresh tokens), the person's part played by a scripted browser.

mod support;

use support::{Flow, Home, OidcServer, login, text};

fn generic_config(server: &OidcServer) -> String {
    format!(
        "[providers.corp]\nkind = \"openai-compatible\"\nupstream = \"http://127.0.0.1:9\"\n\n{}",
        server.oauth_section("corp")
    )
}

/// Every token of every account appears in none of the outputs.
fn assert_no_tokens(home: &Home, outputs: &[&std::process::Output]) {
    for a in home.accounts("corp") {
        for out in outputs {
            for stream in [text(&out.stdout), text(&out.stderr)] {
                assert!(
                    !stream.contains(&a.access),
                    "access token printed: {stream}"
                );
                if let Some(r) = &a.refresh {
                    assert!(
                        !stream.contains(r.as_str()),
                        "refresh token printed: {stream}"
                    );
                }
            }
        }
    }
}

#[test]
fn browser_login_adds_an_account_per_identity_and_updates_on_the_same_one() {
    let server = OidcServer::start(60);
    let home = Home::new(&generic_config(&server));

    let alice = login(&home, &server, "corp", Flow::Loopback, "alice", &[]);
    assert!(alice.status.success(), "{}", text(&alice.stderr));
    let out = text(&alice.stdout);
    assert!(
        out.starts_with("added corp/alice@example.com (oauth as alice@example.com, priority 0)\n"),
        "{out}"
    );
    assert!(out.contains("next: run `marathon serve`"), "{out}");
    let err = text(&alice.stderr);
    assert!(err.contains("Log in to corp in your browser:"), "{err}");
    assert!(err.contains("code_challenge_method=S256"), "{err}");
    assert!(err.contains("waiting for the browser"), "{err}");

    let bob = login(
        &home,
        &server,
        "corp",
        Flow::Loopback,
        "bob",
        &["--priority", "5"],
    );
    assert!(bob.status.success(), "{}", text(&bob.stderr));
    assert!(
        text(&bob.stdout)
            .starts_with("added corp/bob@example.com (oauth as bob@example.com, priority 5)"),
        "{}",
        text(&bob.stdout)
    );
    let before = home.accounts("corp");
    assert_eq!(before.len(), 2);

    // Alice again: her account's tokens are replaced, no duplicate.
    let again = login(&home, &server, "corp", Flow::Loopback, "alice", &[]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).starts_with(
            "updated corp/alice@example.com: logged in again as alice@example.com; its new tokens replace the old ones"
        ),
        "{}",
        text(&again.stdout)
    );
    let after = home.accounts("corp");
    assert_eq!(
        after.iter().map(|a| a.label.as_str()).collect::<Vec<_>>(),
        ["alice@example.com", "bob@example.com"]
    );
    assert_ne!(
        after[0].access, before[0].access,
        "alice's tokens were not replaced"
    );
    assert_eq!(after[1].access, before[1].access);
    for (a, sub) in after.iter().zip(["alice", "bob"]) {
        let intro = server.introspect(&a.access);
        assert_eq!(intro["active"], true, "{intro}");
        assert_eq!(intro["sub"], sub);
        assert!(
            a.refresh.is_some(),
            "offline_access must give a refresh token"
        );
    }
    let list = home
        .marathon()
        .args(["auth", "list", "--json"])
        .output()
        .unwrap();
    let rows: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(rows[1]["priority"], 5);
    assert_eq!(rows[0]["kind"], "oauth");
    assert_eq!(server.stats()["authorization_code_grants"], 3);
    assert_no_tokens(&home, &[&alice, &bob, &again]);
}

#[test]
fn pasted_redirect_and_device_code_logins_give_working_accounts() {
    let server = OidcServer::start(60);
    let home = Home::new(&generic_config(&server));

    let carol = login(
        &home,
        &server,
        "corp",
        Flow::Paste,
        "carol",
        &["--label", "carol"],
    );
    assert!(carol.status.success(), "{}", text(&carol.stderr));
    assert!(
        text(&carol.stdout).starts_with("added corp/carol (oauth as carol@example.com"),
        "{}",
        text(&carol.stdout)
    );
    assert!(text(&carol.stderr).contains("Open this URL in a browser"));

    // A taken --label does not lose the finished login: it is stored under
    // the default label, with a note.
    let bob = login(
        &home,
        &server,
        "corp",
        Flow::Device,
        "bob",
        &["--label", "carol"],
    );
    assert!(bob.status.success(), "{}", text(&bob.stderr));
    let err = text(&bob.stderr);
    assert!(
        err.contains("note: the label \"carol\" belongs to another corp account; stored this one as \"bob@example.com\""),
        "{err}"
    );
    assert!(err.contains("and enter the code"), "{err}");
    assert!(err.contains("waiting for you to approve"), "{err}");
    assert!(
        text(&bob.stdout).starts_with("added corp/bob@example.com (oauth as bob@example.com"),
        "{}",
        text(&bob.stdout)
    );

    let accounts = home.accounts("corp");
    assert_eq!(accounts.len(), 2);
    for (a, sub) in accounts.iter().zip(["bob", "carol"]) {
        let intro = server.introspect(&a.access);
        assert_eq!(intro["active"], true, "{intro}");
        assert_eq!(intro["sub"], sub);
    }
    let stats = server.stats();
    assert_eq!(stats["authorization_code_grants"], 1, "{stats}");
    assert_eq!(stats["device_code_grants"], 1, "{stats}");
    assert_no_tokens(&home, &[&carol, &bob]);
}

#[test]
fn login_refuses_what_cannot_work_before_anything_starts() {
    let server = OidcServer::start(60);
    let home = Home::new(&generic_config(&server));

    let out = home
        .marathon()
        .args(["auth", "login", "openai"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("error: openai has no OAuth login"), "{err}");
    assert!(err.contains("[providers.openai.oauth]"), "{err}");

    let out = home
        .marathon()
        .args(["auth", "login", "corp", "--paste", "--device"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // Copilot logs in by device code only.
    let out = home
        .marathon()
        .args(["auth", "login", "copilot", "--paste"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("copilot cannot log in with --paste"), "{err}");
    assert!(err.contains("copilot supports: --device"), "{err}");

    // A discovery failure names the provider and the issuer.
    let dead = Home::new(
        "[providers.corp]\nkind = \"openai-compatible\"\nupstream = \"http://127.0.0.1:9\"\n\
         [providers.corp.oauth]\nissuer = \"http://127.0.0.1:9\"\nclient_id = \"m\"\n",
    );
    let out = dead
        .marathon()
        .args(["auth", "login", "corp", "--no-browser"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("provider corp: cannot set up its OAuth login (issuer http://127.0.0.1:9)"),
        "{err}"
    );
    assert!(home.accounts("corp").is_empty());
    // So does `marathon serve`, before it listens.
    let out = dead.marathon().arg("serve").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("provider corp: cannot set up its OAuth login (issuer http://127.0.0.1:9)"),
        "{err}"
    );
    assert!(!err.contains("listening on"), "{err}");
}
